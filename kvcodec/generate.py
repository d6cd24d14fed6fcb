"""Sender prefill and receiver work on a (received) KV cache.

``prefill`` runs the model over the context and returns its :class:`KVCache`. The
receiver functions continue from a cache — typically one decoded from a payload, or a
batch of several decoded caches stacked with :meth:`KVCache.stack` — by prefilling the
receiver's tokens at the right positions: ``greedy`` / ``greedy_batch`` decode an answer,
``answer_nll`` scores a gold answer by teacher forcing, ``choice_logits`` reads the
logits of answer letters. None of them modifies the cache it is given.
"""

from __future__ import annotations

import attrs
import torch

from kvcodec.cache import KVCache


@attrs.frozen
class Generation:
    token_ids: list[int]
    text: str
    first_logits: torch.Tensor  # [vocab] float32 logits that chose the first generated token


def _ids(input_ids, device) -> torch.Tensor:
    return torch.as_tensor(input_ids, dtype=torch.long, device=device).reshape(1, -1)


@torch.inference_mode()
def prefill(model, input_ids: list[int] | torch.Tensor) -> KVCache:
    """Prefill ``input_ids`` (a list of token ids, or ``[1, T]`` long tensor) and return the
    model's KV cache."""
    out = model(input_ids=_ids(input_ids, model.device), use_cache=True)
    return KVCache.from_dynamic_cache(out.cache)


def _forward(model, cache: KVCache, ids: torch.Tensor, start: int, dyn=None):
    """One forward pass of ``ids`` ``[B, S]`` at positions ``start …`` on top of ``cache``."""
    dyn = dyn if dyn is not None else cache.to(device=model.device).to_dynamic_cache()
    positions = torch.arange(start, start + ids.shape[1], device=model.device).unsqueeze(0).expand(ids.shape[0], -1)
    out = model(input_ids=ids, cache=dyn, position_ids=positions, use_cache=True)
    return out.logits, dyn


def _start(cache: KVCache) -> int:
    return max(layer.seen_tokens for layer in cache)


#: greedy_batch asks the device whether every row has finished only every this many steps:
#: each question is a host–device synchronisation that stalls a launch-bound decoding loop
CHECK_EVERY = 4


@torch.inference_mode()
def greedy_batch(model, tokenizer, cache: KVCache, input_ids: list[int], *, max_new_tokens: int = 32) -> list[Generation]:
    """Append ``input_ids`` to every row of ``cache`` (batch B) and decode greedily until each
    row emits EOS or ``max_new_tokens`` tokens; one :class:`Generation` per row.

    Positions continue from the cache's ``seen_tokens``, so rotary embeddings line up even
    when the cache holds fewer tokens than it has seen. Tokens stay on the device during the
    loop; a row's answer is its tokens before its first EOS.
    """
    batch = cache.batch_size
    device = model.device
    ids = _ids(input_ids, device).expand(batch, -1)
    eos = torch.tensor(sorted(_eos_ids(model, tokenizer)), dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    first = None
    pos, dyn = _start(cache), None
    for step in range(max_new_tokens):
        logits, dyn = _forward(model, cache, ids, pos, dyn)
        last = logits[:, -1].float()
        if first is None:
            first = last.cpu()
        pos += ids.shape[1]
        tokens = last.argmax(-1)
        finished = finished | torch.isin(tokens, eos)
        steps.append(torch.where(finished, -1, tokens))  # -1: this row has finished
        if (step + 1) % CHECK_EVERY == 0 and bool(finished.all()):
            break
        ids = tokens.unsqueeze(1)
    table = torch.stack(steps, 1).tolist()
    rows = [row[: row.index(-1)] if -1 in row else row for row in table]
    return [
        Generation(r, tokenizer.decode(r, skip_special_tokens=True).strip(), first[i]) for i, r in enumerate(rows)
    ]


def greedy(model, tokenizer, cache: KVCache, input_ids: list[int], *, max_new_tokens: int = 32) -> Generation:
    """:func:`greedy_batch` for a cache of batch size 1."""
    return greedy_batch(model, tokenizer, cache, input_ids, max_new_tokens=max_new_tokens)[0]


@torch.inference_mode()
def answer_nll(model, cache: KVCache, query_ids: list[int], answer_ids: list[int]) -> torch.Tensor:
    """Teacher-forced mean negative log-likelihood (nats per token) of ``answer_ids`` after
    ``query_ids``, for every row of ``cache``: float32 ``[B]``.

    Raises:
        ValueError: if ``answer_ids`` is empty.
    """
    if not answer_ids:
        raise ValueError("answer_nll needs at least one answer token")
    ids = _ids(list(query_ids) + list(answer_ids), model.device).expand(cache.batch_size, -1)
    logits, _ = _forward(model, cache, ids, _start(cache))
    n = len(answer_ids)
    pred = logits[:, -n - 1 : -1].float().log_softmax(-1)
    target = ids[:, -n:]
    return -pred.gather(-1, target.unsqueeze(-1)).squeeze(-1).mean(-1).cpu()


def letter_token_ids(tokenizer, letters: str) -> list[list[int]]:
    """For each letter, the ids of the first token of ``"A"`` and of ``" A"`` (a model may
    write either after the cue)."""
    out = []
    for letter in letters:
        ids = {tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in (letter, f" {letter}")}
        out.append(sorted(ids))
    return out


@torch.inference_mode()
def choice_logits(model, tokenizer, cache: KVCache, query_ids: list[int], letters: str = "ABCD") -> torch.Tensor:
    """Logit of each answer letter after ``query_ids`` (the larger of its two spellings, see
    :func:`letter_token_ids`), for every row of ``cache``: float32 ``[B, len(letters)]``."""
    ids = _ids(query_ids, model.device).expand(cache.batch_size, -1)
    logits, _ = _forward(model, cache, ids, _start(cache))
    last = logits[:, -1].float()
    cols = [last[:, cand].amax(-1) for cand in letter_token_ids(tokenizer, letters)]
    return torch.stack(cols, -1).cpu()


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    return ids
