"""``h2o``: heavy hitters (accumulated attention) plus a recent window.

H2O (Zhang et al., 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of
Large Language Models", arXiv:2306.14048): a token's importance is the attention it has
accumulated from every query of the prompt; each KV head keeps the ``recent`` share of its
budget as the most recent tokens and fills the rest with the heaviest hitters.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import attrs
import torch

from kvcodec.cache import KVCache, LayerKV

from .base import Selector, at_positions, attention_scores_for, keep_count, per_kv_head


def _share(_inst, attribute, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"'{attribute.name}' is a share of the kept tokens: 0 ≤ {attribute.name} ≤ 1, got {value}")


@attrs.frozen
class H2O(Selector):
    """Keep ``floor(recent · n)`` most recent tokens and the ``n − floor(recent · n)`` others
    with the largest accumulated attention (summed over all context queries, averaged over
    the query heads of each KV head). Needs ``context["attention"]["all"]``.
    """

    name = "h2o"

    recent: float = attrs.field(default=0.5, converter=float, validator=_share)
    per_head: bool = True

    def attention_requests(self) -> tuple[str, ...]:
        return ("all",)

    def scores(self, index: int, layer: LayerKV, cache: KVCache, context: Mapping[str, Any]) -> torch.Tensor:
        stats = attention_scores_for(self, context, "all", cache)[index]
        s = at_positions(per_kv_head(stats, layer.kv_heads), layer.positions)
        r = math.floor(self.recent * keep_count(self.keep, layer.seq_len) + 1e-6)
        if r:
            rows = layer.positions if layer.positions.dim() == 2 else layer.positions.expand(s.shape[0], -1)
            newest = rows.topk(r, dim=-1).indices
            s = s.scatter(1, newest, math.inf)
        return s
