"""Check ``round_trip``: decoding gives back the geometry of what was sent."""

from __future__ import annotations

import torch

from kvcodec.cache import KVCache

from ..subject import Subject
from ._common import describe_cache, _decode_own, _encode, _fail


def check_round_trip(subject: Subject, cache: KVCache, device: torch.device | str | None = None) -> KVCache:
    """Encode ``cache`` (moved to ``device``), decode onto ``device``: the result has the
    layer count, batch, dtype and device, and per layer the shapes, positions, seen
    tokens, layer type and sliding window of the cache after the pipeline's cache stages
    (a selector may shorten sequences; positions say which tokens stayed). Elements that
    were finite decode finite. Returns the decoded cache."""
    c = "round_trip"
    cache = cache.to(device) if device is not None else cache
    data = _encode(subject, cache)
    out = _decode_own(c, subject, data, cache, device)
    expected = subject.expected(cache)
    _compare_structure(c, subject, expected, out, device)
    for i, (a, b) in enumerate(zip(expected, out)):
        for what, x, y in (("keys", a.keys, b.keys), ("values", a.values, b.values)):
            bad = torch.isfinite(x) & ~torch.isfinite(y)
            if bool(bad.any()):
                n = int(bad.sum())
                raise _fail(c, subject, f"layer {i} {what}: {n} finite elements decode to inf or NaN ({describe_cache(cache)})")
    return out


def _positions_rows(layer) -> torch.Tensor:
    p = layer.positions.cpu()
    return p.expand(layer.kv_heads, -1) if p.dim() == 1 else p


def _compare_structure(c: str, subject: Subject, expected: KVCache, out: KVCache, device) -> None:
    where = describe_cache(expected)
    if not isinstance(out, KVCache):
        raise _fail(c, subject, f"decode returned {type(out).__name__}, not a KVCache")
    if out.num_layers != expected.num_layers or out.batch_size != expected.batch_size:
        raise _fail(c, subject, f"decoded {out.num_layers} layers of batch {out.batch_size}, sent {where}")
    if out.dtype != expected.dtype:
        raise _fail(c, subject, f"decoded dtype {out.dtype}, sent {expected.dtype} ({where})")
    want_device = torch.device(device) if device is not None else torch.device("cpu")
    if want_device.type == "cuda" and want_device.index is None:
        want_device = torch.device("cuda", torch.cuda.current_device())
    for i, (a, b) in enumerate(zip(expected, out)):
        for what, x, y in (("keys", a.keys, b.keys), ("values", a.values, b.values)):
            if y.shape != x.shape:
                raise _fail(c, subject, f"layer {i} {what} decoded to shape {tuple(y.shape)}, sent {tuple(x.shape)} ({where})")
            if y.device != want_device:
                raise _fail(c, subject, f"layer {i} {what} decoded on {y.device}, asked for {want_device}")
        if (b.seen_tokens, b.layer_type, b.sliding_window) != (a.seen_tokens, a.layer_type, a.sliding_window):
            raise _fail(c, subject, f"layer {i}: seen tokens / layer type / window changed ({where})")
        if b.positions.dtype != torch.int64 or not torch.equal(_positions_rows(a), _positions_rows(b)):
            raise _fail(c, subject, f"layer {i}: token positions changed ({where})")
