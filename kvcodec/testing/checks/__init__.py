"""The codec contract as plain functions: each takes a :class:`~kvcodec.testing.subject.Subject`
(and usually a cache) and raises :class:`ContractViolation` when the codec breaks a clause
of ``specs/plugins.md``, or :class:`NotApplicable` when the clause does not apply to it.

They need neither pytest nor hypothesis; :class:`kvcodec.testing.CodecContract` runs them
as pytest tests over hypothesis-drawn caches, :func:`kvcodec.testing.run_contract` runs
them on a fixed set of caches and reports. One module per check (``payload_fuzz`` holds
``truncation`` and ``corruption``); ``_common`` holds what they share.

========================  ===========================================================
check                     what the codec must do
========================  ===========================================================
``declaration``           class attributes and parameters as ``specs/plugins.md`` §4.2
``parameters``            reject bad parameter values with ``ValueError``; any value it
                          accepts must work; parameters survive spec text and the wire
``forms``                 encode returns the declared forms, valid side information,
                          codes within their declared width, and leaves its input alone
``round_trip``            decode gives back the geometry: shapes, dtype, device,
                          positions, seen tokens, layer types; finite stays finite
``accuracy``              lossless: bit-exact; lossy: within the declared error bound
``byte_count``            ``len(payload)`` = what ``inspect`` reports = the sizes
                          predicted from what the codec returned (wire-format §10)
``deterministic``         the same cache gives the same bytes
``non_finite``            NaN/inf input: ``CodecError`` or a payload that decodes
``truncation``            every truncated payload raises ``DecodeError``, promptly
``corruption``            flipped bytes raise ``DecodeError``; with checksums fixed, the
                          codec's own decode raises ``DecodeError`` or decodes
``damaged_input``         the stage's decode, fed damaged data or side information,
                          raises ``DecodeError`` (never another exception, never hangs,
                          never silently ignores a damaged side array) and does not
                          modify its input
``self_contained``        a fresh process decodes the payload identically and encodes
                          the same bytes: nothing travels outside the payload
``cache_stage``           a cache stage keeps a subset of tokens with their positions
========================  ===========================================================
"""

from __future__ import annotations

from typing import Any, Callable

from ._common import ContractViolation, NotApplicable, Unencodable, describe_cache, same_bits
from .accuracy import accuracy_not_applicable, check_accuracy
from .byte_count import check_byte_count, predict_size
from .cache_stage import check_cache_stage
from .damaged_input import check_damaged_input
from .declaration import check_declaration
from .determinism import check_deterministic
from .forms import check_forms
from .non_finite import check_non_finite
from .parameters import check_parameters
from .payload_fuzz import check_corruption, check_truncation, strict_decode
from .round_trip import check_round_trip
from .self_contained import cache_from_dict, cache_to_dict, check_self_contained

__all__ = [
    "ContractViolation",
    "NotApplicable",
    "Unencodable",
    "CHECKS",
    "check_declaration",
    "check_parameters",
    "check_forms",
    "check_round_trip",
    "check_accuracy",
    "accuracy_not_applicable",
    "check_byte_count",
    "check_deterministic",
    "check_non_finite",
    "check_truncation",
    "check_corruption",
    "check_damaged_input",
    "check_self_contained",
    "check_cache_stage",
    "strict_decode",
    "predict_size",
    "describe_cache",
    "same_bits",
    "cache_to_dict",
    "cache_from_dict",
]

#: every check, by name: (function, takes a cache)
CHECKS: dict[str, tuple[Callable[..., Any], bool]] = {
    "declaration": (check_declaration, False),
    "parameters": (check_parameters, True),
    "forms": (check_forms, True),
    "round_trip": (check_round_trip, True),
    "accuracy": (check_accuracy, True),
    "byte_count": (check_byte_count, True),
    "deterministic": (check_deterministic, True),
    "non_finite": (check_non_finite, True),
    "truncation": (check_truncation, True),
    "corruption": (check_corruption, True),
    "damaged_input": (check_damaged_input, True),
    "self_contained": (check_self_contained, False),
    "cache_stage": (check_cache_stage, True),
}
