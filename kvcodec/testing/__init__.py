"""kvcodec.testing: the contract-test kit for codec plugins.

A plugin author checks a codec against everything ``specs/plugins.md`` requires with a
few lines of pytest (tutorial: ``docs/plugin-tutorial.md``)::

    from kvcodec.testing import CodecContract

    class TestMyCodec(CodecContract):
        spec = "mycodec:level=3"

What is in the kit:

- :class:`CodecContract` — the contract suite as a pytest base class;
- :func:`run_contract` — the same checks without pytest, returning a
  :class:`ContractReport`;
- :mod:`kvcodec.testing.checks` — each clause as a function raising
  :class:`ContractViolation` (an ``AssertionError``);
- :func:`kv_caches` — a hypothesis strategy for realistic KV caches;
  :func:`make_cache`, :func:`standard_caches` — deterministic ones;
- :func:`registry_with` — a registry with extra stage classes, for a codec that is not
  installed yet.

Needs the ``test`` extra (pytest, hypothesis): ``pip install 'kvcodec[test]'``. kvcodec
itself never imports this package.
"""

from __future__ import annotations

import importlib.util

_missing = [m for m in ("pytest", "hypothesis") if importlib.util.find_spec(m) is None]
if _missing:  # pragma: no cover - exercised only without the test extra
    raise ImportError(f"kvcodec.testing needs {' and '.join(_missing)}: pip install 'kvcodec[test]'")

from .caches import make_cache, make_layer, realistic_values, standard_caches
from .checks import CHECKS, ContractViolation, NotApplicable, describe_cache, predict_size
from .contract import CodecContract, default_devices
from .report import ContractReport, Outcome, run_contract
from .strategies import kv_caches
from .subject import Subject, registry_with
from .timeouts import TimeLimitExceeded, call_with_timeout

__all__ = [
    "CodecContract",
    "run_contract",
    "ContractReport",
    "Outcome",
    "CHECKS",
    "ContractViolation",
    "NotApplicable",
    "Subject",
    "registry_with",
    "kv_caches",
    "make_cache",
    "make_layer",
    "realistic_values",
    "standard_caches",
    "describe_cache",
    "predict_size",
    "default_devices",
    "TimeLimitExceeded",
    "call_with_timeout",
]
