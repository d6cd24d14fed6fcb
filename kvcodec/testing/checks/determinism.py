"""Check ``deterministic``: the same cache gives the same bytes, and stays unchanged."""

from __future__ import annotations

from kvcodec.cache import KVCache

from ..subject import Subject
from ._common import describe_cache, _encode, _fail, _snapshot, _unchanged


def check_deterministic(subject: Subject, cache: KVCache) -> None:
    """Encoding leaves the cache unchanged, and the same cache gives the same bytes when
    encoded again (from a copy: equal values, other tensors, other addresses)."""
    c = "deterministic"
    snap = _snapshot(cache)
    first = _encode(subject, cache)
    if not _unchanged(cache, snap):
        raise _fail(c, subject, f"encoding modified the cache it was given ({describe_cache(cache)})")
    copy_ = KVCache(l.replace(keys=k.clone(), values=v.clone(), positions=p.clone()) for l, (k, v, p) in zip(cache, snap))
    again = _encode(subject, copy_)
    if again != first:
        at = next((i for i, (x, y) in enumerate(zip(first, again)) if x != y), min(len(first), len(again)))
        raise _fail(
            c,
            subject,
            f"encoding the same cache again (from a copy) gave different bytes ({len(first)} vs {len(again)}"
            f" bytes, first difference at offset {at}; {describe_cache(cache)})",
        )
