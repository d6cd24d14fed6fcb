"""``q2c``: question-to-context attention — keep the context tokens the question reads.

The sender knows the question: it prefills context + question once (eager attention,
:mod:`kvcodec.attention`) and scores every context token by the attention the question's
tokens pay to it, summed over the question's tokens. It then sends only context tokens;
the receiver recomputes the question on top of them. (The "question-aware" selection of
e.g. LongLLMLingua, Jiang et al., 2023, arXiv:2310.06839, and the Q2C scoring compared in
"KV cache compression, but what must we give in return?", Yuan et al., 2024,
arXiv:2407.01527; as a transmitted-cache selector here.)
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
import torch

from kvcodec.cache import KVCache, LayerKV

from .base import Selector, at_positions, attention_scores_for, per_kv_head


@attrs.frozen
class Q2C(Selector):
    """Keep the ``keep`` fraction of each layer's tokens that the question attends to most.

    Score of a stored token: the attention the question's tokens pay to it, summed over
    the question's tokens, averaged over the query heads of its KV head (and over all
    heads unless ``per_head``). Needs ``context["attention"]["question"]``.
    """

    name = "q2c"

    per_head: bool = False

    def attention_requests(self) -> tuple[str, ...]:
        return ("question",)

    def scores(self, index: int, layer: LayerKV, cache: KVCache, context: Mapping[str, Any]) -> torch.Tensor:
        stats = attention_scores_for(self, context, "question", cache)[index]
        return at_positions(per_kv_head(stats, layer.kv_heads), layer.positions)
