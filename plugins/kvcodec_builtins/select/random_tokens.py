"""``random``: keep a seeded uniformly random subset of the tokens (the baseline every
selector must beat)."""

from __future__ import annotations

from typing import Any, Mapping

import attrs
import torch

from kvcodec.cache import KVCache, LayerKV

from .base import Selector

#: layer ``i`` draws from a generator seeded with ``seed · SEED_STRIDE + i``
SEED_STRIDE = 1_000_003


@attrs.frozen
class RandomSelector(Selector):
    """Score of the stored tokens of layer ``i``: a random permutation of ``0 … T−1``
    drawn by ``torch.randperm`` from a CPU generator seeded with ``seed·1000003 + i``,
    one row per KV head when ``per_head`` (drawn in head order), else one row."""

    name = "random"

    seed: int = attrs.field(default=0, validator=[attrs.validators.ge(0), attrs.validators.lt(2**40)])
    per_head: bool = False

    def scores(self, index: int, layer: LayerKV, cache: KVCache, context: Mapping[str, Any]) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * SEED_STRIDE + index)
        rows = layer.kv_heads if (self.per_head or layer.positions.dim() == 2) else 1
        return torch.stack([torch.randperm(layer.seq_len, generator=gen) for _ in range(rows)]).double()
