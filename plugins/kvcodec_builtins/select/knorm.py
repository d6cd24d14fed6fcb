"""``knorm``: keep the tokens whose keys have the lowest L2 norm.

Devoto et al., 2024, "A Simple and Effective L2 Norm-Based Strategy for KV Cache
Compression", EMNLP 2024, arXiv:2406.11430: a low key norm goes with high attention, so
the lowest-norm keys are kept. Needs no attention statistics: the sender's keys suffice.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
import torch

from kvcodec.cache import KVCache, LayerKV

from .base import Selector


@attrs.frozen
class KNorm(Selector):
    """Score of a stored token: minus the L2 norm of its key (float32, averaged over the
    batch), per KV head (or averaged over heads unless ``per_head``)."""

    name = "knorm"

    per_head: bool = True

    def scores(self, index: int, layer: LayerKV, cache: KVCache, context: Mapping[str, Any]) -> torch.Tensor:
        return -torch.linalg.vector_norm(layer.keys.float(), dim=-1).mean(0)
