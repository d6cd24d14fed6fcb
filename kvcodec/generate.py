"""Sender prefill and receiver work on a (received) KV cache.

``prefill`` runs the model over the context and returns its :class:`KVCache`. The
receiver functions continue from a cache — typically one decoded from a payload, or a
batch of several decoded caches stacked with :meth:`KVCache.stack` — by prefilling the
receiver's tokens at the right positions: ``greedy`` / ``greedy_batch`` decode an answer,
``answer_nll`` scores a gold answer by teacher forcing, ``choice_logits`` reads the
logits of answer letters. None of them modifies the cache it is given.

**Selected caches.** After token selection a layer stores fewer tokens than it has seen, at
explicit (possibly per-KV-head) positions. Rotary embeddings are already in the stored
keys, and new tokens take positions ``seen_tokens, seen_tokens + 1, …`` (explicit
``position_ids``), so full-attention layers need nothing else: every stored token is in
the past of every new one, and transformers' causal mask only orders the new tokens
among themselves. Sliding-window layers do: the model must not attend to a stored token
whose position has left the window, which transformers decides from the stored tokens'
*count* (it assumes they are the last ``min(seen_tokens, window − 1)``). When a sliding
layer holds anything else (or layers of one type hold different counts), the receiver
therefore runs with a position-aware attention (:func:`positioned_attention`): plain
DynamicCache layers without eviction, and a mask built per layer and KV head from the
true positions — query ``p`` sees key ``k`` iff ``k ≤ p`` and, in a sliding layer of
window ``W``, ``k > p − W`` (transformers' rule). ``specs/selectors.md`` §7.
"""

from __future__ import annotations

import contextlib
import contextvars

import attrs
import torch

from kvcodec.cache import SLIDING_ATTENTION, KVCache


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


def _forward(model, cache: KVCache, ids: torch.Tensor, start: int, dyn=None, rows=None):
    """One forward pass of ``ids`` ``[B, S]`` at positions ``start …`` on top of ``cache``
    (``rows``: per-row stored positions, see :func:`receiver_batches`)."""
    if dyn is None:
        if rows is not None:
            dyn = _Positioned.of(model, cache, rows)
        elif needs_positioned_attention(cache):
            dyn = _Positioned.of(model, cache)
        else:
            dyn = cache.to(device=model.device).to_dynamic_cache()
    positions = torch.arange(start, start + ids.shape[1], device=model.device).unsqueeze(0).expand(ids.shape[0], -1)
    if isinstance(dyn, _Positioned):
        if start != dyn.start + dyn.cache.layers[0].keys.shape[-2] - dyn.rows[0].shape[-1]:
            raise ValueError(f"position-aware receiver: tokens must follow each other (got position {start})")
        with _positioned(model, dyn):
            out = model(input_ids=ids, cache=dyn.cache, position_ids=positions, use_cache=True)
    else:
        out = model(input_ids=ids, cache=dyn, position_ids=positions, use_cache=True)
    return out.logits, dyn


# ------------------------------------------------------------------ position-aware attention
POSITIONED_ATTENTION = "kvcodec_positioned"
_ACTIVE: contextvars.ContextVar["_Positioned | None"] = contextvars.ContextVar("kvcodec_positioned", default=None)


def needs_positioned_attention(cache: KVCache) -> bool:
    """True when transformers' masks would be wrong for ``cache``: a sliding-window layer
    that does not store exactly what transformers assumes — the last
    ``min(seen_tokens, sliding_window − 1)`` tokens — or layers of one attention type that
    store different numbers of tokens (transformers builds one mask per type)."""
    counts: dict[str, set[int]] = {}
    for layer in cache:
        if layer.layer_type == SLIDING_ATTENTION and (
            layer.seq_len != min(layer.seen_tokens, layer.sliding_window - 1) or not layer.has_contiguous_positions
        ):
            return True
        counts.setdefault(layer.layer_type, set()).add(layer.seq_len)
    return any(len(c) > 1 for c in counts.values())


@attrs.frozen(eq=False)
class ReceiverBatch:
    """Several caches run through the receiver as one batch (:func:`receiver_batches`).

    Attributes:
        members: indices of the caches (in the list given) that form the batch rows, in order.
        cache: the rows stacked along the batch dimension.
        positions: ``None`` when the stacked cache's own positions hold for every row;
            else, per layer, int64 ``[B, 1 or kv_heads, seq_len]``: each row's stored
            positions (caches of one geometry whose token selections differ).
    """

    members: tuple[int, ...]
    cache: KVCache
    positions: tuple[torch.Tensor, ...] | None


def _geometry(cache: KVCache) -> tuple:
    return tuple(
        (tuple(l.keys.shape[1:]), tuple(l.values.shape[1:]), l.keys.dtype, l.seen_tokens, l.layer_type,
         l.sliding_window, tuple(l.positions.shape))
        for l in cache
    )


def receiver_batches(caches: list[KVCache], batch_size: int) -> list[ReceiverBatch]:
    """Group caches into receiver batches of at most ``batch_size`` rows.

    Caches of one geometry (per layer: shapes, dtype, tokens seen, layer type, sliding
    window, positions' shape) share a batch. Where their stored positions differ (e.g.
    different token selectors keeping the same number of tokens), the positions matter
    only to layers that need the position-aware mask (:func:`needs_positioned_attention`);
    then the batch carries every row's positions and the receiver masks each row by its own.

    Raises:
        ValueError: if ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1 (got {batch_size})")
    groups: dict[tuple, list[int]] = {}
    for i, cache in enumerate(caches):
        groups.setdefault(_geometry(cache), []).append(i)
    out = []
    for members in groups.values():
        for k in range(0, len(members), batch_size):
            rows = members[k : k + batch_size]
            part = [caches[i] for i in rows]
            first = part[0]
            same = all(torch.equal(a.positions, b.positions) for c in part[1:] for a, b in zip(first, c))
            if same:
                out.append(ReceiverBatch(tuple(rows), KVCache.stack(part), None))
                continue
            stacked = first.map(
                lambda i, layer: layer.replace(
                    keys=torch.cat([c[i].keys for c in part]), values=torch.cat([c[i].values for c in part])
                )
            )
            positions = None
            if any(needs_positioned_attention(c) for c in part):
                positions = tuple(
                    torch.cat([
                        (c[i].positions if c[i].positions.dim() == 2 else c[i].positions[None])[None].expand(c.batch_size, -1, -1)
                        for c in part
                    ])
                    for i in range(first.num_layers)
                )
            out.append(ReceiverBatch(tuple(rows), stacked, positions))
    return out


@attrs.frozen(eq=False)
class _Positioned:
    """The receiver's state in position-aware mode: a DynamicCache without eviction, the
    stored tokens' positions per layer (``[1 or kv_heads, seq_len]``, or
    ``[B, 1 or kv_heads, seq_len]`` when batch rows differ, on the model's device), each
    layer's sliding window (or ``None``) and the first new position."""

    cache: object
    rows: tuple[torch.Tensor, ...]
    windows: tuple[int | None, ...]
    start: int

    @classmethod
    def of(cls, model, cache: KVCache, rows: tuple[torch.Tensor, ...] | None = None) -> "_Positioned":
        """The state for ``cache``; ``rows`` (per layer ``[B, 1 or kv_heads, seq_len]``)
        gives each batch row its own stored positions (see :func:`receiver_batches`)."""
        from transformers.cache_utils import DynamicCache, DynamicLayer

        cache = cache.to(device=model.device)
        layers = []
        for layer in cache:
            dyn = DynamicLayer()
            dyn.lazy_initialization(layer.keys, layer.values)
            dyn.keys, dyn.values = layer.keys, layer.values
            layers.append(dyn)
        dyn_cache = DynamicCache()
        dyn_cache.layers = layers
        dyn_cache.layer_class_to_replicate = None
        if rows is None:
            rows = tuple(l.positions if l.positions.dim() == 2 else l.positions.unsqueeze(0) for l in cache)
        else:
            rows = tuple(r.to(model.device) for r in rows)
        windows = tuple(l.sliding_window if l.layer_type == SLIDING_ATTENTION else None for l in cache)
        return cls(dyn_cache, rows, windows, _start(cache))


def positioned_mask(cached: torch.Tensor, start: int, kv_len: int, q_len: int, window: int | None) -> torch.Tensor:
    """Boolean ``[R, q_len, kv_len]`` (or ``[B, R, q_len, kv_len]``): may query ``i``
    attend to key ``j``?

    ``cached`` ``[R, s]`` holds the positions of the ``s`` stored keys (one row per KV head
    or one shared row), or ``[B, R, s]`` one such table per batch row; keys ``s …`` are new
    tokens at positions ``start, start + 1, …`` and the queries are the last ``q_len`` of
    them. A query at ``p`` sees a key at ``k`` iff ``k ≤ p`` and, with a sliding
    ``window``, ``k > p − window``.
    """
    new = torch.arange(start, start + kv_len - cached.shape[-1], device=cached.device)
    keys = torch.cat([cached, new.expand(*cached.shape[:-1], -1)], dim=-1).unsqueeze(-2)
    queries = new[new.numel() - q_len :][:, None]
    allowed = keys <= queries
    if window is not None:
        allowed &= keys > queries - window
    return allowed


def positioned_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
    """An attention function for transformers' ``AttentionInterface`` that masks by the true
    token positions of the active :class:`_Positioned` state (see the module docstring);
    the attention itself is ``torch``'s scaled dot-product attention (softmax with
    ``softcap`` in plain torch when a model caps its logits)."""
    state = _ACTIVE.get()
    if state is None:
        raise RuntimeError("positioned attention runs only inside the kvcodec receiver")
    index = module.layer_idx
    allowed = positioned_mask(state.rows[index], state.start, key.shape[-2], query.shape[-2], state.windows[index])
    return _masked_attention(query, key, value, allowed if allowed.dim() == 4 else allowed.unsqueeze(0), scaling, softcap)


@contextlib.contextmanager
def _attention_mode(model, name: str, function, var: contextvars.ContextVar, state):
    """Run ``model`` with the attention ``function`` (registered as ``name``) reading
    ``state`` from ``var``; the model's own attention is restored afterwards."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, function)
    before = model.config._attn_implementation
    token = var.set(state)
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
        var.reset(token)


def _positioned(model, state: _Positioned):
    return _attention_mode(model, POSITIONED_ATTENTION, positioned_attention, _ACTIVE, state)


def _start(cache: KVCache) -> int:
    return max(layer.seen_tokens for layer in cache)


#: greedy_batch asks the device whether every row has finished only every this many steps:
#: each question is a host–device synchronisation that stalls a launch-bound decoding loop
CHECK_EVERY = 4


@torch.inference_mode()
def greedy_batch(
    model, tokenizer, cache: KVCache, input_ids: list[int], *, max_new_tokens: int = 32, positions=None
) -> list[Generation]:
    """Append ``input_ids`` to every row of ``cache`` (batch B) and decode greedily until each
    row emits EOS or ``max_new_tokens`` tokens; one :class:`Generation` per row.
    ``positions``: each row's stored positions (:attr:`ReceiverBatch.positions`).

    Positions continue from the cache's ``seen_tokens``, so rotary embeddings line up even
    when the cache holds fewer tokens than it has seen. Tokens stay on the device during the
    loop; a row's answer is its tokens before its first EOS.
    """
    device = model.device
    ids = _ids(input_ids, device).expand(cache.batch_size, -1)
    state = {"pos": _start(cache), "dyn": None}

    def forward(tokens: torch.Tensor | None) -> torch.Tensor:
        step_ids = ids if tokens is None else tokens.unsqueeze(1)
        logits, state["dyn"] = _forward(model, cache, step_ids, state["pos"], state["dyn"], positions)
        state["pos"] += step_ids.shape[1]
        return logits

    return _decode_greedily(forward, cache.batch_size, model, tokenizer, max_new_tokens)


def _decode_greedily(forward, batch: int, model, tokenizer, max_new_tokens: int) -> list[Generation]:
    """The greedy loop shared by :func:`greedy_batch` and :func:`greedy_rows`:
    ``forward(None)`` prefills the receiver's tokens, ``forward(tokens)`` feeds each row's
    last token ``[B]``; both return logits ``[B, S, vocab]``. A row stops at its first EOS;
    the device is asked whether all rows have finished only every :data:`CHECK_EVERY` steps."""
    device = model.device
    eos = torch.tensor(sorted(_eos_ids(model, tokenizer)), dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    first, tokens = None, None
    for step in range(max_new_tokens):
        last = forward(tokens)[:, -1].float()
        if first is None:
            first = last.cpu()
        tokens = last.argmax(-1)
        finished = finished | torch.isin(tokens, eos)
        steps.append(torch.where(finished, -1, tokens))  # -1: this row has finished
        if (step + 1) % CHECK_EVERY == 0 and bool(finished.all()):
            break
    table = torch.stack(steps, 1).tolist()
    rows = [row[: row.index(-1)] if -1 in row else row for row in table]
    return [
        Generation(r, tokenizer.decode(r, skip_special_tokens=True).strip(), first[i]) for i, r in enumerate(rows)
    ]


def greedy(model, tokenizer, cache: KVCache, input_ids: list[int], *, max_new_tokens: int = 32) -> Generation:
    """:func:`greedy_batch` for a cache of batch size 1."""
    return greedy_batch(model, tokenizer, cache, input_ids, max_new_tokens=max_new_tokens)[0]


@torch.inference_mode()
def answer_nll(model, cache: KVCache, query_ids: list[int], answer_ids: list[int], *, positions=None) -> torch.Tensor:
    """Teacher-forced mean negative log-likelihood (nats per token) of ``answer_ids`` after
    ``query_ids``, for every row of ``cache``: float32 ``[B]``. ``positions`` as
    :func:`greedy_batch`'s.

    Raises:
        ValueError: if ``answer_ids`` is empty.
    """
    if not answer_ids:
        raise ValueError("answer_nll needs at least one answer token")
    ids = _ids(list(query_ids) + list(answer_ids), model.device).expand(cache.batch_size, -1)
    logits, _ = _forward(model, cache, ids, _start(cache), rows=positions)
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
def choice_logits(
    model, tokenizer, cache: KVCache, query_ids: list[int], letters: str = "ABCD", *, positions=None
) -> torch.Tensor:
    """Logit of each answer letter after ``query_ids`` (the larger of its two spellings, see
    :func:`letter_token_ids`), for every row of ``cache``: float32 ``[B, len(letters)]``.
    ``positions`` as :func:`greedy_batch`'s."""
    ids = _ids(query_ids, model.device).expand(cache.batch_size, -1)
    logits, _ = _forward(model, cache, ids, _start(cache), rows=positions)
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


# ------------------------------------------------------------------ ragged batches (several samples)
#: position given to padding slots and padding tokens: after every real position, so no
#: real query ever sees them (a padding query sees every key, itself included, so its
#: softmax row is never empty; its outputs are discarded).
PADDING_POSITION = 2**40
RAGGED_ATTENTION = "kvcodec_ragged"
_RAGGED: contextvars.ContextVar["_Ragged | None"] = contextvars.ContextVar("kvcodec_ragged", default=None)


@attrs.define(eq=False)
class _Ragged:
    """Receiver state for rows from different samples: each layer's stored slots (padded to
    the longest row, padding at :data:`PADDING_POSITION`), the positions of every token
    appended since (``new`` ``[B, n]``) and of the current forward's queries (``query``)."""

    cache: object
    stored: tuple[torch.Tensor, ...]  # per layer [B, R, s]
    windows: tuple[int | None, ...]
    new: torch.Tensor
    query: torch.Tensor | None = None

    @classmethod
    def of(cls, model, caches: list[KVCache]) -> "_Ragged":
        from transformers.cache_utils import DynamicCache, DynamicLayer

        device = model.device
        first = caches[0]
        batch = sum(c.batch_size for c in caches)
        layers, stored = [], []
        for i in range(first.num_layers):
            parts = [c[i] for c in caches]
            heads = parts[0].kv_heads
            s = max(l.seq_len for l in parts)
            per_head = any(l.positions.dim() == 2 for l in parts)
            r = heads if per_head else 1
            k = parts[0].keys.new_zeros(batch, heads, s, parts[0].head_dim, device=device)
            v = parts[0].values.new_zeros(batch, heads, s, parts[0].values.shape[-1], device=device)
            pos = torch.full((batch, r, s), PADDING_POSITION, dtype=torch.long, device=device)
            row = 0
            for layer in parts:
                b, t = layer.keys.shape[0], layer.seq_len
                k[row : row + b, :, :t] = layer.keys.to(device)
                v[row : row + b, :, :t] = layer.values.to(device)
                p = layer.positions.to(device)
                pos[row : row + b, :, :t] = (p if p.dim() == 2 else p[None]).expand(r, -1)
                row += b
            dyn = DynamicLayer()
            dyn.lazy_initialization(k, v)
            dyn.keys, dyn.values = k, v
            layers.append(dyn)
            stored.append(pos)
        dyn_cache = DynamicCache()
        dyn_cache.layers = layers
        dyn_cache.layer_class_to_replicate = None
        windows = tuple(l.sliding_window if l.layer_type == SLIDING_ATTENTION else None for l in first)
        return cls(dyn_cache, tuple(stored), windows, torch.zeros(batch, 0, dtype=torch.long, device=device))


def ragged_mask(stored: torch.Tensor, new: torch.Tensor, query: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean ``[B, R, q, s + n]``: may query ``i`` of row ``b`` attend to key ``j``?

    ``stored`` ``[B, R, s]``: positions of the stored slots (one row per KV head or one
    shared row); ``new`` ``[B, n]``: positions of the tokens appended since, the current
    queries included; ``query`` ``[B, q]``: the queries' positions. A query at ``p`` sees a
    key at ``k`` iff ``k ≤ p`` and, with a sliding ``window``, ``k > p − window`` — as
    :func:`positioned_mask`, with padding at :data:`PADDING_POSITION`.
    """
    keys = torch.cat([stored, new[:, None, :].expand(-1, stored.shape[1], -1)], dim=-1)[:, :, None, :]
    p = query[:, None, :, None]
    allowed = keys <= p
    if window is not None:
        allowed &= keys > p - window
    return allowed


def _masked_attention(query, key, value, allowed, scaling, softcap):
    """SDPA (or softcapped softmax attention) of ``query`` ``[B, heads, q, D]`` under the
    boolean mask ``allowed`` ``[B or 1, heads or KV rows, q, kv]``."""
    heads = query.shape[1]
    if allowed.shape[1] != heads:
        allowed = allowed.repeat_interleave(heads // allowed.shape[1], dim=1)
    group = heads // key.shape[1]
    if group > 1:
        key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    if softcap is None:
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling)
    else:
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        logits = torch.tanh(query @ key.transpose(-1, -2) * scale / softcap) * softcap
        probs = logits.masked_fill(~allowed, float("-inf")).softmax(-1, dtype=torch.float32).to(query.dtype)
        out = probs @ value
    return out.transpose(1, 2).contiguous(), None


def ragged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
    """An ``AttentionInterface`` function for rows of different samples (see :class:`_Ragged`)."""
    state = _RAGGED.get()
    if state is None:
        raise RuntimeError("ragged attention runs only inside the kvcodec receiver")
    index = module.layer_idx
    allowed = ragged_mask(state.stored[index], state.new, state.query, state.windows[index])
    return _masked_attention(query, key, value, allowed, scaling, softcap)


def _ragged(model, state: _Ragged):
    return _attention_mode(model, RAGGED_ATTENTION, ragged_attention, _RAGGED, state)


def _left_padded(seqs: list[list[int]], starts: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids ``[B, L]`` left-padded with token 0, their mask positions (padding at
    :data:`PADDING_POSITION`) and their rotary ``position_ids`` (padding at 0); row ``b``'s
    tokens take positions ``starts[b], starts[b] + 1, …``."""
    length = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), length, dtype=torch.long)
    pos = torch.full((len(seqs), length), PADDING_POSITION, dtype=torch.long)
    for b, seq in enumerate(seqs):
        if seq:
            ids[b, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            pos[b, length - len(seq) :] = torch.arange(len(seq)) + int(starts[b])
    pos = pos.to(device)
    return ids.to(device), pos, torch.where(pos == PADDING_POSITION, 0, pos)


def _ragged_forward(model, state: _Ragged, ids: torch.Tensor, mask_pos: torch.Tensor, rotary_pos: torch.Tensor):
    state.new = torch.cat([state.new, mask_pos], dim=1)
    state.query = mask_pos
    with _ragged(model, state):
        out = model(input_ids=ids, cache=state.cache, position_ids=rotary_pos, use_cache=True)
    return out.logits


def _row_starts(caches: list[KVCache], device) -> torch.Tensor:
    return torch.tensor([_start(c) for c in caches for _ in range(c.batch_size)], dtype=torch.long, device=device)


@torch.inference_mode()
def greedy_rows(model, tokenizer, caches: list[KVCache], input_ids: list[list[int]], *, max_new_tokens: int = 32) -> list[Generation]:
    """:func:`greedy_batch` for caches of different samples run as one batch: ``caches[i]``
    (any geometry of the model, any positions) continues with ``input_ids[i]``; one
    :class:`Generation` per batch row, in order. Rows are padded to the longest (stored
    slots and tokens, masked by position); every row decodes greedily as it would alone,
    up to the batch-invariance of the model's kernels.

    Raises:
        ValueError: if the lists differ in length or a row has no input tokens.
    """
    if len(caches) != len(input_ids) or any(not ids for ids in input_ids):
        raise ValueError("greedy_rows needs one non-empty token list per cache")
    device = model.device
    state = _Ragged.of(model, caches)
    seqs = [list(ids) for c, ids in zip(caches, input_ids) for _ in range(c.batch_size)]
    starts = _row_starts(caches, device)
    ids, mask_pos, rotary = _left_padded(seqs, starts, device)
    nxt = starts + torch.tensor([len(s) for s in seqs], device=device)

    def forward(tokens: torch.Tensor | None) -> torch.Tensor:
        nonlocal nxt
        if tokens is None:
            return _ragged_forward(model, state, ids, mask_pos, rotary)
        here = nxt.unsqueeze(1)
        nxt = nxt + 1
        return _ragged_forward(model, state, tokens.unsqueeze(1), here, here)

    return _decode_greedily(forward, len(seqs), model, tokenizer, max_new_tokens)


@torch.inference_mode()
def answer_nll_rows(model, caches: list[KVCache], query_ids: list[list[int]], answer_ids: list[list[int]]) -> torch.Tensor:
    """:func:`answer_nll` for caches of different samples as one batch (as
    :func:`greedy_rows`): float32 ``[B]``, one value per batch row.

    Raises:
        ValueError: if the lists differ in length or an answer is empty.
    """
    if not (len(caches) == len(query_ids) == len(answer_ids)) or any(not a for a in answer_ids):
        raise ValueError("answer_nll_rows needs one query and one non-empty answer per cache")
    device = model.device
    state = _Ragged.of(model, caches)
    seqs, lengths = [], []
    for c, q, a in zip(caches, query_ids, answer_ids):
        for _ in range(c.batch_size):
            seqs.append(list(q) + list(a))
            lengths.append(len(a))
    ids, mask_pos, rotary = _left_padded(seqs, _row_starts(caches, device), device)
    logp = _ragged_forward(model, state, ids, mask_pos, rotary).float().log_softmax(-1)
    out = []
    width = ids.shape[1]
    for b, n in enumerate(lengths):
        pred = logp[b, width - n - 1 : width - 1]
        out.append(-pred.gather(-1, ids[b, width - n :].unsqueeze(-1)).mean())
    return torch.stack(out).cpu()
