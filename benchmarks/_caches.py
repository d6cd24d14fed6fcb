"""The synthetic KV cache the codec benchmarks share when no real model is used."""

from __future__ import annotations

import torch

from kvcodec.cache import KVCache, LayerKV


def synthetic_cache(tokens: int, layers: int = 30, heads: int = 3, head_dim: int = 64) -> KVCache:
    """A float32 cache of SmolLM2-135M's geometry (30 layers, 3 KV heads, head_dim 64) with
    ``tokens`` tokens: N(0, 1) values, keys' first 4 channels ×20 (outlier channels, as
    real keys have); seeded, so every run and every benchmark sees the same cache."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(layers):
        k = torch.randn(1, heads, tokens, head_dim, generator=g)
        k[..., :4] *= 20
        v = torch.randn(1, heads, tokens, head_dim, generator=g)
        out.append(LayerKV.contiguous(k, v))
    return KVCache(out)
