"""``snapkv``: the observation window at the end of the prompt votes for the tokens to keep.

SnapKV (Li et al., 2024, "SnapKV: LLM Knows What You are Looking for Before Generation",
arXiv:2404.14469): the attention the last ``window`` tokens of the prompt pay to the
earlier ones, summed over the window, smoothed by a 1-D pooling over neighbouring tokens
(kernel ``kernel``, ``avg`` or ``max``) so that kept tokens come with their neighbours;
each KV head keeps its highest-scoring tokens plus the window itself. Here the prompt is
what the sender has, the context.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import attrs
import torch
import torch.nn.functional as F

from kvcodec.cache import KVCache, LayerKV

from .base import Selector, at_positions, attention_scores_for


#: largest ``window`` (the wire format's longest sequence) and ``kernel``
MAX_WINDOW = 1 << 24
MAX_KERNEL = 4095


def _odd(_inst, attribute, value: int) -> None:
    if not 1 <= value <= MAX_KERNEL or value % 2 == 0:
        raise ValueError(f"'{attribute.name}' must be an odd number in 1..{MAX_KERNEL} (a centred pooling kernel), got {value}")


@attrs.frozen
class SnapKV(Selector):
    """Keep the observation window and the prefix tokens it attends to most.

    The last ``window`` context tokens are the observation window; a prefix token's score
    is their summed attention to it, pooled over ``kernel`` neighbours (``pool`` = ``avg``
    or ``max``, stride 1, zero padding ``kernel // 2``) per query head, then averaged over
    the query heads of each KV head. Window tokens always win. Needs
    ``context["attention"]["window:<window>"]``.
    """

    name = "snapkv"

    window: int = attrs.field(default=32, validator=[attrs.validators.ge(1), attrs.validators.le(MAX_WINDOW)])
    kernel: int = attrs.field(default=7, validator=_odd)
    pool: str = attrs.field(default="avg", validator=attrs.validators.in_(("avg", "max")))
    per_head: bool = True

    def attention_requests(self) -> tuple[str, ...]:
        return (f"window:{self.window}",)

    def scores(self, index: int, layer: LayerKV, cache: KVCache, context: Mapping[str, Any]) -> torch.Tensor:
        stats = attention_scores_for(self, context, f"window:{self.window}", cache)[index].float()
        b, hq, t = stats.shape
        w = min(self.window, t)
        prefix = stats[..., : t - w].reshape(b * hq, 1, t - w)
        if t - w:
            pad = self.kernel // 2
            pooled = (
                F.avg_pool1d(prefix, self.kernel, stride=1, padding=pad)
                if self.pool == "avg"
                else F.max_pool1d(F.pad(prefix, (pad, pad)), self.kernel, stride=1)
            )
            prefix = pooled
        prefix = prefix.reshape(b, layer.kv_heads, hq // layer.kv_heads, t - w).mean(2).mean(0)
        table = torch.cat([prefix, torch.full((layer.kv_heads, w), math.inf)], dim=-1)
        return at_positions(table, layer.positions)
