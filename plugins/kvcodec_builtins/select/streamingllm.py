"""``streamingllm``: attention sinks plus a recent window.

StreamingLLM (Xiao et al., 2024, "Efficient Streaming Language Models with Attention
Sinks", ICLR 2024, arXiv:2309.17453): the first few tokens soak up attention whatever
they say ("attention sinks") and must stay; with them, the most recent tokens suffice.
Needs no attention statistics.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import attrs
import torch

from kvcodec.cache import KVCache, LayerKV

from .base import Selector, keep_count


@attrs.frozen
class StreamingLLM(Selector):
    """Keep the ``min(sinks, n)`` earliest stored tokens and the most recent others.

    The score of a stored token is its position (recent first), ``+inf`` for the sinks.
    Positions are shared by all heads (per head only when they already were).
    """

    name = "streamingllm"

    sinks: int = attrs.field(default=4, validator=attrs.validators.ge(0))

    def scores(self, index: int, layer: LayerKV, cache: KVCache, context: Mapping[str, Any]) -> torch.Tensor:
        rows = layer.positions if layer.positions.dim() == 2 else layer.positions.unsqueeze(0)
        s = rows.double()
        sinks = min(self.sinks, keep_count(self.keep, layer.seq_len))
        if sinks:
            s = s.scatter(1, rows.topk(sinks, dim=-1, largest=False).indices, math.inf)
        return s
