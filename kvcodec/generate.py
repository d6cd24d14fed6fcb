"""Sender prefill and receiver generation with a (received) KV cache.

``prefill`` runs the model over the context and returns its :class:`KVCache`.
``greedy`` continues from a cache — typically one decoded from a payload — by prefilling
the receiver's tokens at the right positions and decoding greedily.
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


@torch.inference_mode()
def prefill(model, input_ids: list[int] | torch.Tensor) -> KVCache:
    """Prefill ``input_ids`` (a list of token ids, or ``[1, T]`` long tensor) and return the
    model's KV cache."""
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=model.device).reshape(1, -1)
    out = model(input_ids=ids, use_cache=True)
    return KVCache.from_dynamic_cache(out.cache)


@torch.inference_mode()
def greedy(model, tokenizer, cache: KVCache, input_ids: list[int], *, max_new_tokens: int = 32) -> Generation:
    """Append ``input_ids`` to ``cache`` and decode greedily until EOS or ``max_new_tokens``.

    Positions continue from the cache's ``seen_tokens`` (so rotary embeddings line up even
    when the cache holds fewer tokens than it has seen). ``cache`` is not modified.
    """
    dyn = cache.to(device=model.device).to_dynamic_cache()
    start = max(layer.seen_tokens for layer in cache)
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=model.device).reshape(1, -1)
    eos = _eos_ids(model, tokenizer)
    out_ids: list[int] = []
    first_logits = None
    pos = start
    for _ in range(max_new_tokens):
        positions = torch.arange(pos, pos + ids.shape[1], device=model.device).unsqueeze(0)
        out = model(input_ids=ids, cache=dyn, position_ids=positions, use_cache=True)
        logits = out.logits[0, -1].float()
        if first_logits is None:
            first_logits = logits.cpu()
        pos += ids.shape[1]
        token = int(logits.argmax())
        if token in eos:
            break
        out_ids.append(token)
        ids = torch.tensor([[token]], device=model.device)
    text = tokenizer.decode(out_ids, skip_special_tokens=True)
    return Generation(out_ids, text.strip(), first_logits)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    return ids
