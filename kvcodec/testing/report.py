"""Run the contract checks without pytest or hypothesis and get a report: for a quick look
at a codec, or to assert that a deliberately broken codec fails a given check.

>>> from kvcodec.testing import run_contract
>>> report = run_contract("e4m3")
>>> report.failed
[]
>>> print(report)                      # one line per check: passed, failed (why), not applicable
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs

from kvcodec.cache import KVCache

from .caches import standard_caches
from .checks import CHECKS, ContractViolation, NotApplicable, Unencodable
from .subject import Subject

__all__ = ["run_contract", "ContractReport", "Outcome", "FUZZ_CACHES"]

#: checks that decode many damaged payloads per cache run on the first few fixed caches
FUZZ_CACHES = 3


@attrs.frozen
class Outcome:
    """One check's result: ``status`` is ``"passed"``, ``"failed"`` or ``"not applicable"``."""

    status: str
    message: str = ""


@attrs.frozen
class ContractReport:
    """The outcome of every check :func:`run_contract` ran, by check name."""

    spec: str
    codec: str
    outcomes: dict[str, Outcome]

    @property
    def failed(self) -> list[str]:
        """Names of the checks that failed."""
        return [k for k, o in self.outcomes.items() if o.status == "failed"]

    @property
    def passed(self) -> list[str]:
        return [k for k, o in self.outcomes.items() if o.status == "passed"]

    def __str__(self) -> str:
        lines = [f"contract of {self.codec} in {self.spec!r}:"]
        for name, o in self.outcomes.items():
            lines.append(f"  {name:<15} {o.status}{': ' + o.message if o.message else ''}")
        return "\n".join(lines)

    def raise_on_failure(self) -> None:
        """Raise :class:`ContractViolation` listing every failed check."""
        if self.failed:
            raise ContractViolation(",".join(self.failed), str(self))


def _run_check(name: str, subject: Subject, caches: list[KVCache]) -> Outcome:
    fn, takes_cache = CHECKS[name]
    try:
        if name == "self_contained":
            fn(subject, caches)
            return Outcome("passed")
        if not takes_cache:
            fn(subject)
            return Outcome("passed")
        pool = caches[:FUZZ_CACHES] if name in ("truncation", "corruption", "damaged_input") else caches
        if name == "parameters":
            pool = pool[:2]
        ran, refused, skipped = 0, [], []
        for cache in pool:
            try:
                fn(subject, cache)
                ran += 1
            except Unencodable as exc:
                refused.append(str(exc))
            except NotApplicable as exc:
                skipped.append(str(exc))
        if not ran and skipped and not refused:
            return Outcome("not applicable", skipped[0])
        if not ran:
            return Outcome("failed", "encode refused every test cache: " + (refused[0] if refused else ""))
        return Outcome("passed")
    except ContractViolation as exc:
        return Outcome("failed", str(exc))
    except NotApplicable as exc:
        return Outcome("not applicable", str(exc))
    except Exception as exc:  # noqa: BLE001 - a crash inside the codec is a failure, reported as such
        return Outcome("failed", f"{type(exc).__name__}: {exc}")


def run_contract(
    spec: str,
    codec: str | None = None,
    *,
    checks: Sequence[str] | None = None,
    caches: list[KVCache] | None = None,
    **subject_options: Any,
) -> ContractReport:
    """Run the contract checks on the codec ``codec`` as used in the pipeline ``spec`` and
    report each outcome (no pytest, no hypothesis: fixed caches only).

    Args:
        spec, codec: as :class:`~kvcodec.testing.subject.Subject`.
        checks: names from :data:`~kvcodec.testing.checks.CHECKS` (default: all).
        caches: the caches to test on (default:
            :func:`~kvcodec.testing.caches.standard_caches`).
        subject_options: ``extra_codecs``, ``context``, ``decode_timeout``,
            ``require_error_bound``, ``invalid_params``, ``cache_stage_keeps_values``.

    Raises:
        SpecError: if ``spec`` does not parse; ValueError: for an unknown check name.
    """
    subject = Subject(spec, codec, **subject_options)
    caches = caches if caches is not None else standard_caches()
    names = list(CHECKS) if checks is None else list(checks)
    for name in names:
        if name not in CHECKS:
            raise ValueError(f"unknown check {name!r}; the checks are {', '.join(CHECKS)}")
    return ContractReport(spec, subject.codec, {name: _run_check(name, subject, caches) for name in names})
