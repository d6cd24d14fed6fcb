"""What every token selector shares: the keep count, the ranking rule and the gathering.

A selector is a :class:`~kvcodec.codec.CacheStage`: it keeps, in every layer, ``n`` of the
``T`` tokens the layer stores and sends them with their absolute positions. It only
decides *which* tokens: :meth:`Selector.scores` gives every stored token a score (higher
is kept first) and :func:`keep_indices` turns scores into the kept indices. The exact rules
are in ``specs/selectors.md``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import attrs
import torch

from kvcodec.cache import KVCache, LayerKV
from kvcodec.codec import CacheStage
from kvcodec.errors import CodecError

__all__ = ["Selector", "keep_count", "keep_indices", "gather", "attention_scores_for", "EPSILON"]

#: a product ``keep · T`` within this distance of an integer counts as that integer (so that
#: ``keep=0.3`` of 10 tokens keeps 3, not 4, despite 0.3 being 0.29999… in binary)
EPSILON = 1e-6


def _fraction(_inst, attribute, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
        raise ValueError(f"'{attribute.name}' is the fraction of tokens kept: 0 < {attribute.name} ≤ 1, got {value}")


def keep_count(keep: float, tokens: int) -> int:
    """Tokens a layer storing ``tokens`` keeps at fraction ``keep``: ``ceil(keep·T − 1e-6)``,
    at least 1 and at most ``T``."""
    return max(1, min(tokens, math.ceil(keep * tokens - EPSILON)))


def keep_indices(scores: torch.Tensor, positions: torch.Tensor, n: int) -> torch.Tensor:
    """Indices ``[R, n]`` (ascending) of the ``n`` highest-scoring tokens of each row.

    ``scores`` and ``positions`` are ``[R, T]`` (one row per KV head, or one row shared by
    all heads). Ties go to the larger position (the more recent token); ``+inf`` marks
    tokens that must be kept, ``nan`` counts as ``-inf``.
    """
    scores = torch.nan_to_num(scores.float(), nan=-math.inf)
    recent_first = torch.argsort(positions, dim=-1, descending=True, stable=True)
    ordered = scores.gather(-1, recent_first)
    rank = torch.argsort(ordered, dim=-1, descending=True, stable=True)[:, :n]
    return recent_first.gather(-1, rank).sort(dim=-1).values


def gather(layer: LayerKV, idx: torch.Tensor) -> LayerKV:
    """The layer restricted to the stored tokens ``idx`` ``[R, n]``: one row shared by all
    heads gives shared ``[n]`` positions, one row per head per-head ``[H, n]`` positions."""
    idx = idx.to(layer.keys.device)
    b, h = layer.keys.shape[:2]
    if idx.shape[0] == 1:
        flat = idx[0]
        positions = layer.positions.index_select(-1, flat)
        return layer.replace(
            keys=layer.keys.index_select(2, flat), values=layer.values.index_select(2, flat), positions=positions
        )
    n = idx.shape[1]

    def take(x: torch.Tensor) -> torch.Tensor:
        return x.gather(2, idx.view(1, h, n, 1).expand(b, h, n, x.shape[-1]))

    rows = layer.positions if layer.positions.dim() == 2 else layer.positions.expand(h, -1)
    return layer.replace(keys=take(layer.keys), values=take(layer.values), positions=rows.gather(1, idx).contiguous())


def attention_scores_for(stage: "Selector", context: Mapping[str, Any], request: str, cache: KVCache) -> list[torch.Tensor]:
    """The sender's attention statistics ``request`` (``kvcodec.attention``) from ``context``:
    one float tensor ``[B, query_heads, T_context]`` per layer, checked against ``cache``.

    Raises:
        CodecError: when they are missing or do not fit the cache.
    """
    stats = context.get("attention") if context else None
    if not isinstance(stats, Mapping) or request not in stats:
        raise CodecError(
            f"{stage.name!r} needs the sender's attention statistics context['attention'][{request!r}]"
            " (kvcodec eval computes them; from Python: kvcodec.attention.attention_scores)"
        )
    per_layer = list(stats[request])
    if len(per_layer) != cache.num_layers:
        raise CodecError(f"{stage.name!r}: attention statistics cover {len(per_layer)} layers, the cache has {cache.num_layers}")
    for i, (s, layer) in enumerate(zip(per_layer, cache)):
        if not isinstance(s, torch.Tensor) or s.dim() != 3 or s.shape[1] % layer.kv_heads:
            raise CodecError(
                f"{stage.name!r}: attention statistics of layer {i} must be [batch, query_heads, tokens] with a"
                f" multiple of {layer.kv_heads} query heads"
            )
        if s.shape[-1] != layer.seen_tokens:
            raise CodecError(
                f"{stage.name!r}: attention statistics of layer {i} cover {s.shape[-1]} context tokens,"
                f" the layer has seen {layer.seen_tokens}"
            )
    return per_layer


def per_kv_head(scores: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """``[B, query_heads, T]`` → ``[kv_heads, T]``: mean over the query heads that share a KV
    head (grouped-query attention: query head ``j`` reads KV head ``j // group``), then
    over the batch."""
    b, hq, t = scores.shape
    return scores.float().reshape(b, kv_heads, hq // kv_heads, t).mean(2).mean(0)


def at_positions(table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Per-head values ``table`` ``[H, T_context]`` at the stored ``positions`` (``[T]`` or
    ``[H, T]``): ``[H, T]``."""
    table = table.to(positions.device)
    rows = positions if positions.dim() == 2 else positions.expand(table.shape[0], -1)
    return table.gather(1, rows)


@attrs.frozen
class Selector(CacheStage):
    """Base of the token selectors: ``keep`` is the fraction of each layer's stored tokens
    that is sent (``0 < keep ≤ 1``; the default 1.0 sends everything, so a spec string
    always shows the fraction it selects).

    A subclass sets ``name``, declares its own parameters and implements :meth:`scores`;
    ``per_head`` (a class attribute, or a parameter of that name) says whether each KV head
    chooses its own tokens.
    """

    family = "selector"

    keep: float = attrs.field(default=1.0, converter=float, validator=_fraction)

    def attention_requests(self) -> tuple[str, ...]:
        """Names of the sender's attention statistics this selector reads from
        ``context["attention"]`` (``kvcodec.attention``); the harness computes exactly these."""
        return ()

    def scores(self, index: int, layer: LayerKV, cache: KVCache, context: Mapping[str, Any]) -> torch.Tensor:
        """A score for every stored token of layer ``index``: ``[H, T]`` (per KV head) or
        ``[1, T]``, on any device; the highest are kept, ``+inf`` always."""
        raise NotImplementedError

    def apply(self, cache: KVCache, context: Mapping[str, Any]) -> KVCache:
        context = context or {}
        layers = []
        for i, layer in enumerate(cache):
            n = keep_count(self.keep, layer.seq_len)
            if n == layer.seq_len:
                layers.append(layer)  # nothing to drop: the layer is sent as it is
                continue
            per_head = bool(getattr(self, "per_head", False)) or layer.positions.dim() == 2
            s = self.scores(i, layer, cache, context).float().to(layer.positions.device)
            if not per_head:
                s = s.mean(0, keepdim=True)
            elif s.shape[0] == 1:
                s = s.expand(layer.kv_heads, -1)
            rows = layer.positions.expand(s.shape[0], -1) if layer.positions.dim() == 1 else layer.positions
            layers.append(gather(layer, keep_indices(s, rows, n)))
        return KVCache(layers)
