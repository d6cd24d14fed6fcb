"""Check ``cache_stage``: a cache stage keeps a subset of the tokens, with their positions."""

from __future__ import annotations

import torch

from kvcodec.cache import KVCache
from kvcodec.codec import CacheStage
from kvcodec.errors import CodecError

from ..subject import Subject
from ._common import NotApplicable, same_bits, Unencodable, _fail
from .round_trip import _positions_rows


def check_cache_stage(subject: Subject, cache: KVCache) -> None:
    """A cache stage returns a :class:`KVCache` of the same layer count, batch, dtype,
    device, heads, head dims, seen tokens and layer types; each layer keeps at most its
    tokens, at positions it had (no repeats within a head); with
    ``cache_stage_keeps_values`` the kept keys and values are the originals, bit for bit;
    applying it twice gives the same cache; without its context it works or raises
    ``CodecError``.

    Raises:
        NotApplicable: for a tensor stage.
    """
    c = "cache_stage"
    stage = subject.stage
    if not isinstance(stage, CacheStage):
        raise NotApplicable(f"{subject.codec} is a tensor stage")
    run = lambda ctx: subject.timed(lambda: stage.apply(cache, ctx), f"{stage}.apply")  # noqa: E731
    try:
        out = run(subject.context)
    except CodecError as exc:
        raise Unencodable(str(exc)) from None
    if not isinstance(out, KVCache):
        raise _fail(c, subject, f"apply returned {type(out).__name__}, not a KVCache")
    if (out.num_layers, out.batch_size, out.dtype, out.device) != (cache.num_layers, cache.batch_size, cache.dtype, cache.device):
        raise _fail(c, subject, "apply changed the layer count, batch, dtype or device")
    for i, (a, b) in enumerate(zip(cache, out)):
        if (b.kv_heads, b.head_dim, b.values.shape[-1], b.seen_tokens, b.layer_type, b.sliding_window) != (
            a.kv_heads, a.head_dim, a.values.shape[-1], a.seen_tokens, a.layer_type, a.sliding_window
        ):
            raise _fail(c, subject, f"layer {i}: heads, head dims, seen tokens or layer type changed")
        if b.seq_len > a.seq_len:
            raise _fail(c, subject, f"layer {i}: {b.seq_len} tokens out of {a.seq_len}")
        pa, pb = _positions_rows(a), _positions_rows(b)
        for h in range(a.kv_heads):
            kept = pb[h].tolist()
            if len(set(kept)) != len(kept) or not set(kept) <= set(pa[h].tolist()):
                raise _fail(
                    c, subject, f"layer {i} head {h}: kept positions {kept[:8]}… are not distinct positions of the input"
                )
            if subject.cache_stage_keeps_values:
                index = {p: t for t, p in enumerate(pa[h].tolist())}
                src = torch.tensor([index[p] for p in kept], dtype=torch.long, device=a.keys.device)
                for what, x, y in (("keys", a.keys, b.keys), ("values", a.values, b.values)):
                    if not same_bits(x[:, h].index_select(1, src), y[:, h]):
                        raise _fail(c, subject, f"layer {i} head {h}: kept {what} differ from the originals at their positions")
    again = run(subject.context)
    if not all(same_bits(x.keys, y.keys) and same_bits(x.positions, y.positions) for x, y in zip(out, again)):
        raise _fail(c, subject, "apply gives different caches for the same input")
    if subject.context:
        try:
            run({})
        except CodecError:
            pass
        except Exception as exc:  # noqa: BLE001 - the finding
            raise _fail(c, subject, f"apply without its context raised {type(exc).__name__}: {exc}; raise CodecError") from None
