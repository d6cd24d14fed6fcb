"""Sender-side attention statistics for the token selectors that read attention.

The sender prefills its context (followed by the receiver's question, which it knows for
question-aware selection) once more with **eager** attention, whose attention
probabilities are the ones the model uses: ``softmax(Q·Kᵀ·scale + mask)`` with the
model's own causal and sliding-window masks, per layer and query head. A forward hook on
every attention module reduces each layer's ``[batch, query_heads, L, L]`` probabilities
at once to what the selectors ask for, so the full matrices are never kept:

=================  =====================================================================
request            one float32 tensor ``[batch, query_heads, T]`` per layer: for each of
                   the ``T`` context tokens, the attention it receives, summed over …
=================  =====================================================================
``"question"``     … the question's tokens (``q2c``)
``"all"``          … every context token (its accumulated attention; ``h2o``)
``"window:W"``     … the last ``min(W, T)`` context tokens, the observation window (``snapkv``)
=================  =====================================================================

Because attention is causal, the rows of the context tokens are the same whether or not
the question follows them, so one prefill of context + question serves every request.
The statistics travel to the cache stages as ``context["attention"]`` (a dict request →
list of per-layer tensors); the receiver never needs them. A selector asks for them
through its ``attention_requests()`` method.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterable, Iterator, Sequence

import torch

__all__ = ["attention_scores", "capture_attention", "attention_requests", "eager_attention", "attention_modules"]

_REQUEST = re.compile(r"(question|all|window:([1-9][0-9]{0,8}))\Z")


def attention_requests(pipelines: Iterable) -> tuple[str, ...]:
    """The attention statistics the cache stages of ``pipelines`` need, sorted (empty when
    none needs any). A stage says what it needs through ``attention_requests()``."""
    out: set[str] = set()
    for pipeline in pipelines:
        for stage in getattr(pipeline, "cache_stages", ()):
            ask = getattr(stage, "attention_requests", None)
            if ask is not None:
                out.update(ask())
    return tuple(sorted(out))


def attention_modules(model) -> list[torch.nn.Module]:
    """The model's self-attention modules, ordered by their ``layer_idx``.

    Raises:
        ValueError: if none is found or their layer indices are not 0 … n−1.
    """
    found = {}
    for module in model.modules():
        if isinstance(getattr(module, "layer_idx", None), int) and hasattr(module, "q_proj") and hasattr(module, "k_proj"):
            found[module.layer_idx] = module
    if not found or sorted(found) != list(range(len(found))):
        raise ValueError(f"cannot find the attention modules of {type(model).__name__} (layer indices {sorted(found)})")
    return [found[i] for i in range(len(found))]


@contextlib.contextmanager
def eager_attention(model) -> Iterator[None]:
    """Run ``model`` with transformers' eager attention inside the block (masks and
    probabilities exactly as ``attn_implementation="eager"``), then restore its own."""
    before = model.config._attn_implementation
    if before == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


@torch.inference_mode()
def capture_attention(model, input_ids: Sequence[int] | torch.Tensor, reduce: Callable[[int, torch.Tensor], object]) -> list:
    """Prefill ``input_ids`` with eager attention and return ``[reduce(i, probs_i)]`` for
    every layer ``i``, where ``probs_i`` is that layer's ``[batch, query_heads, L, L]``
    attention probabilities (rows: queries, columns: keys; each row sums to 1).

    Nothing is cached: the model runs without a KV cache.
    """
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=model.device).reshape(1, -1)
    modules = attention_modules(model)
    out: list = [None] * len(modules)
    seen = [False] * len(modules)

    def hook(index: int):
        def fn(_module, _args, output):
            probs = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if probs is None:
                raise RuntimeError(f"layer {index}: the attention module returned no probabilities")
            out[index] = reduce(index, probs)
            seen[index] = True

        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        with eager_attention(model):
            try:  # the logits of one position suffice: skip most of the output projection
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
            except TypeError:
                model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if not all(seen):
        raise RuntimeError(f"attention of layers {[i for i, s in enumerate(seen) if not s]} was not captured")
    return out


def _check(requests: Iterable[str]) -> tuple[str, ...]:
    requests = tuple(dict.fromkeys(requests))
    for r in requests:
        if not isinstance(r, str) or not _REQUEST.match(r):
            raise ValueError(f"unknown attention statistic {r!r}; expected 'question', 'all' or 'window:<tokens>'")
    return requests


def attention_scores(
    model, context_ids: Sequence[int], question_ids: Sequence[int] = (), requests: Iterable[str] = ("question",)
) -> dict[str, list[torch.Tensor]]:
    """The attention statistics ``requests`` of the context tokens (see the module
    docstring): request → one float32 CPU tensor ``[1, query_heads, len(context_ids)]``
    per layer.

    One eager prefill of ``context_ids + question_ids`` (the question only when
    ``"question"`` is requested).

    Raises:
        ValueError: for an unknown request, an empty context, or ``"question"`` without
            question tokens.
    """
    requests = _check(requests)
    context_ids, question_ids = list(context_ids), list(question_ids)
    t = len(context_ids)
    if not t:
        raise ValueError("attention statistics need at least one context token")
    if "question" in requests and not question_ids:
        raise ValueError("the 'question' attention statistic needs the question's token ids")
    ids = context_ids + (question_ids if "question" in requests else [])

    def reduce(_index: int, probs: torch.Tensor) -> dict[str, torch.Tensor]:
        cols = probs[..., :t].float()
        got = {}
        for r in requests:
            if r == "question":
                rows = cols[..., t:, :]
            elif r == "all":
                rows = cols[..., :t, :]
            else:
                w = min(int(r.split(":")[1]), t)
                rows = cols[..., t - w : t, :]
            got[r] = rows.sum(-2).cpu()
        return got

    per_layer = capture_attention(model, ids, reduce)
    return {r: [layer[r] for layer in per_layer] for r in requests}
