"""Check ``non_finite``: NaN and inf are refused with ``CodecError`` or encoded decodably."""

from __future__ import annotations

import math

from kvcodec.cache import KVCache
from kvcodec.errors import CodecError

from ..subject import Subject
from ..timeouts import TimeLimitExceeded
from ._common import _decode_own, _fail
from .round_trip import _compare_structure


def check_non_finite(subject: Subject, cache: KVCache) -> None:
    """A cache holding NaN, +inf and −inf is refused with ``CodecError`` or encoded into a
    payload that decodes (with the right geometry)."""
    c = "non_finite"

    def spoil(_i, layer):
        keys = layer.keys.clone()
        for j, v in enumerate((math.nan, math.inf, -math.inf)):
            keys[0, 0, 0, j % keys.shape[-1]] = v
        return layer.replace(keys=keys)

    bad = cache.map(spoil)
    try:
        data = subject.encode(bad)
    except CodecError:
        return
    except TimeLimitExceeded as exc:
        raise _fail(c, subject, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the finding
        what = f"{type(exc).__name__}: {exc}"
        raise _fail(c, subject, f"a cache holding NaN/inf made encode raise {what}; raise CodecError") from None
    out = _decode_own(c, subject, data, bad)
    _compare_structure(c, subject, subject.expected(bad), out, None)
