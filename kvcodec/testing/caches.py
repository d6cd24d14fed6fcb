"""Deterministic, realistic KV caches for codec tests (no hypothesis needed).

Real KV caches are not Gaussian noise: a few key channels carry outliers tens of times
larger than the rest (the observation behind per-channel key quantization in KIVI, Liu et
al., 2024, arXiv:2402.02750), and the first token, the "attention sink" (Xiao et al.,
2023, arXiv:2309.17453), is often much larger than the others. :func:`realistic_values`
draws such tensors; :func:`make_layer` and :func:`make_cache` build layers and caches of
any geometry (GQA or MQA head counts, sliding-window layers, token-selected layers with
explicit positions, tensors that are not contiguous in memory); :func:`standard_caches`
is a fixed set that covers the geometries a codec must handle.
"""

from __future__ import annotations

import torch

from kvcodec.cache import SLIDING_ATTENTION, KVCache, LayerKV

__all__ = ["realistic_values", "make_layer", "make_cache", "standard_caches", "LAYER_KINDS"]

#: layer kinds :func:`make_layer` builds
LAYER_KINDS = ("full", "sliding", "selected")
#: values stay within ±60000 so that a float16 cache is finite
VALUE_LIMIT = 60000.0


def realistic_values(
    gen: torch.Generator,
    shape: tuple[int, ...],
    scale: float = 1.0,
    outlier_channels: tuple[int, ...] = (),
    outlier_gain: float = 50.0,
    sink: float = 1.0,
) -> torch.Tensor:
    """A float32 tensor ``[B, H, T, D]`` shaped like real keys or values.

    Elements are N(0, scale²); the channels in ``outlier_channels`` (indices into D) are
    multiplied by ``outlier_gain``; the first token (``T`` index 0) by ``sink``. The
    result is clamped to ±60000 so that it stays finite in float16.
    """
    x = torch.randn(shape, generator=gen) * scale
    for c in sorted(set(outlier_channels)):
        x[..., c] *= outlier_gain
    x[:, :, :1, :] *= sink
    return x.clamp(-VALUE_LIMIT, VALUE_LIMIT)


def make_layer(
    gen: torch.Generator,
    *,
    batch: int = 1,
    heads: int = 2,
    seq: int = 8,
    head_dim: int = 16,
    head_dim_v: int | None = None,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    outliers: tuple[int, ...] = (),
    sink: float = 1.0,
    kind: str = "full",
    extra_seen: int = 0,
    per_head: bool = False,
    contiguous: bool = True,
    device: torch.device | str | None = None,
    window: int | None = None,
) -> LayerKV:
    """One decoder layer of ``dtype`` (float32, float16 or bfloat16) on ``device``.

    Keys ``[batch, heads, seq, head_dim]``, values ``[batch, heads, seq, head_dim_v]``
    (default: ``head_dim``), drawn by :func:`realistic_values`. ``kind``:

    - ``"full"``: full attention, positions ``0 … seq − 1``;
    - ``"sliding"``: a sliding-window layer (window ``window``, default ``seq``; at least
      ``seq``) that has seen ``seq + extra_seen`` tokens and keeps the last ``seq``;
    - ``"selected"``: explicit, sorted, non-contiguous positions out of
      ``seq + max(extra_seen, 1)`` seen tokens, shared by all heads or (``per_head``) one
      row per KV head — what a token selector leaves.

    ``contiguous=False`` gives keys and values that are transposed views of
    ``[batch, seq, heads, head_dim]`` tensors, not contiguous in memory — what attention
    code hands over after ``view(b, t, h, d).transpose(1, 2)``.

    Raises:
        ValueError: for an unknown ``kind`` or an impossible geometry.
    """
    if kind not in LAYER_KINDS:
        raise ValueError(f"kind must be one of {LAYER_KINDS}, got {kind!r}")
    dv = head_dim if head_dim_v is None else head_dim_v
    k = realistic_values(gen, (batch, heads, seq, head_dim), scale, tuple(c for c in outliers if c < head_dim), sink=sink)
    v = realistic_values(gen, (batch, heads, seq, dv), scale, tuple(c for c in outliers if c < dv), sink=sink)
    k, v = k.to(dtype=dtype, device=device), v.to(dtype=dtype, device=device)
    if not contiguous:
        k = k.transpose(1, 2).contiguous().transpose(1, 2)
        v = v.transpose(1, 2).contiguous().transpose(1, 2)
    if kind == "full":
        return LayerKV.contiguous(k, v)
    if kind == "sliding":
        w = seq if window is None else window
        return LayerKV.contiguous(k, v, seq + extra_seen, layer_type=SLIDING_ATTENTION, sliding_window=w)
    seen = seq + max(extra_seen, 1)
    rows = heads if per_head else 1
    pos = torch.stack([torch.randperm(seen, generator=gen)[:seq].sort().values for _ in range(rows)])
    pos = pos.to(device) if device is not None else pos
    return LayerKV(k, v, pos if per_head else pos[0], seen)


def make_cache(seed: int = 0, layers: int = 2, **kw) -> KVCache:
    """A cache of ``layers`` layers of one geometry, reproducible from ``seed``; the
    keyword arguments are those of :func:`make_layer`."""
    gen = torch.Generator().manual_seed(seed)
    return KVCache(make_layer(gen, **kw) for _ in range(layers))


def _with_huge(x: torch.Tensor, value: float) -> torch.Tensor:
    """A copy of ``x`` with one element (the last token's first channel) set to ``value``."""
    x = x.clone()
    x[..., -1, 0] = value
    return x


def standard_caches(
    head_dims: tuple[int, ...] = (8, 12), device: torch.device | str | None = None, very_long: bool = False
) -> list[KVCache]:
    """A fixed list of caches covering what a codec must handle.

    Float32, float16 and bfloat16; MHA, GQA and MQA head counts; one token (float16 and
    float32) and several;
    outlier channels and a large first token; tiny and large magnitudes (up to the float16
    limit, and beyond it in float32 and bfloat16 caches); a constant (all-zero) layer;
    sliding-window layers; token-selected layers with
    shared and per-head positions; values with another head_dim than the keys'; keys and
    values that are not contiguous in memory; a sequence longer than 256 tokens, where
    8-bit token indices overflow, and with ``very_long`` one longer than 65536 (16-bit
    indices; it makes every check a few seconds slower on a small CPU).

    Keys take the first of ``head_dims``, the values of the split case and of the
    non-contiguous cache the last (by default 8 and 12: a power of two and not). A codec
    with a constraint on head_dim passes its own. The first three caches are the small
    ones the fuzzing checks use.
    """
    d, dv = head_dims[0], head_dims[-1]
    out = [
        make_cache(1, layers=2, heads=2, seq=7, head_dim=d, outliers=(1,), sink=8.0),
        make_cache(2, layers=1, heads=1, seq=1, head_dim=dv, dtype=torch.float16),
        make_cache(3, layers=2, batch=2, heads=4, seq=5, head_dim=d, dtype=torch.bfloat16, scale=0.02),
        make_cache(4, layers=1, heads=2, seq=9, head_dim=d, dtype=torch.float16, scale=3000.0, outliers=(0,)),
        make_cache(5, layers=1, heads=3, seq=4, head_dim=d, scale=1e-3, kind="sliding", extra_seen=6),
        make_cache(6, layers=1, heads=2, seq=6, head_dim=d, head_dim_v=dv, kind="selected", per_head=True),
        make_cache(7, layers=1, heads=1, seq=3, head_dim=d, dtype=torch.bfloat16, kind="selected", extra_seen=300),
        make_cache(9, layers=2, batch=2, heads=3, seq=5, head_dim=dv, dtype=torch.bfloat16, contiguous=False),
    ]
    zero = make_cache(8, layers=1, heads=1, seq=2, head_dim=d)
    out.append(zero.map(lambda _, l: l.replace(keys=torch.zeros_like(l.keys), values=torch.zeros_like(l.values))))
    out.append(make_cache(10, layers=1, heads=2, seq=300, head_dim=d, dtype=torch.float16, sink=8.0))
    # one float32 token: every per-channel group is constant, and its value is rarely a
    # float16 number (a zero point rounded to nearest instead of down lands above it)
    out.append(make_cache(14, layers=1, heads=2, seq=1, head_dim=d, scale=3.0))
    # finite values beyond float16's range (±65504) in float32 and bfloat16 caches: a codec
    # that passes values through float16 turns them into ±inf
    for seed, dtype in ((12, torch.float32), (13, torch.bfloat16)):
        big = make_cache(seed, layers=1, heads=2, seq=4, head_dim=d, dtype=dtype)
        out.append(big.map(lambda _, l: l.replace(keys=_with_huge(l.keys, 1e5), values=_with_huge(l.values, -2e5))))
    if very_long:
        out.append(make_cache(11, layers=1, heads=1, seq=65536 + 300, head_dim=d, kind="sliding", extra_seen=40))
    return [c.to(device) if device is not None else c for c in out]
