"""Token selection on real models (CPU): the receiver continues at the right positions.

For each model the sender prefills a short context, selects tokens, encodes, and the
receiver decodes and generates. The reference is independent of kvcodec's receiver: the
*full* sender cache run with a test-side attention that hides, per layer (and KV head),
the tokens the selector dropped — the exact meaning of "the receiver sees only the kept
tokens, at their positions". Gemma-3's sliding window is shrunk to 16 tokens so that the
question and the answer push kept tokens out of the window.
"""

from __future__ import annotations

import pytest
import torch
from test_attention import WINDOW, loaded, prompt_ids, sliding_window
from transformers import AttentionInterface

import kvcodec
from kvcodec import wire
from kvcodec.attention import attention_scores
from kvcodec.cache import SLIDING_ATTENTION
from kvcodec.generate import _forward, answer_nll, greedy, greedy_batch, prefill, receiver_batches

pytestmark = pytest.mark.model

REFERENCE = "kvcodec_test_masked_full_cache"
NEW_TOKENS = 4
_kept: dict = {}  # layer → ([rows, seen] bool of kept context tokens, sliding window or None, seen)


def masked_full_cache_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain softmax attention over the full cache: key ``j`` (position ``j``) is visible to
    the query at position ``p`` iff ``j ≤ p``, it was kept (or is a receiver token) and, in
    a sliding layer, ``j > p − window``."""
    kept, window, seen = _kept[module.layer_idx]
    kv, q = key.shape[-2], query.shape[-2]
    k = torch.arange(kv)
    p = torch.arange(kv - q, kv)[:, None]
    visible = torch.cat([kept, torch.ones(kept.shape[0], kv - seen, dtype=torch.bool)], dim=-1)[:, None, :]
    visible = visible & (k <= p)
    if window is not None:
        visible = visible & (k > p - window)
    heads = query.shape[1]
    visible = visible.repeat_interleave(heads // visible.shape[0], dim=0)[None]
    key = key.repeat_interleave(heads // key.shape[1], dim=1)
    value = value.repeat_interleave(heads // value.shape[1], dim=1)
    logits = (query @ key.transpose(-1, -2)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    probs = logits.masked_fill(~visible, float("-inf")).softmax(-1)
    return (probs @ value).transpose(1, 2).contiguous(), None


AttentionInterface.register(REFERENCE, masked_full_cache_attention)


def reference_generation(lm, context_ids, full_cache, selected, question_ids):
    """Logits of the question and greedy tokens, from a cache that stores *every* context
    token in every layer (sliding ones included) with the dropped tokens hidden."""
    from transformers.cache_utils import DynamicCache

    model, seen = lm.model, len(context_ids)
    dyn = DynamicCache()  # no config: plain layers that never evict
    with torch.inference_mode():
        model(input_ids=torch.tensor([context_ids]), cache=dyn, use_cache=True, logits_to_keep=1)
    _kept.clear()
    for i, (a, b) in enumerate(zip(full_cache, selected)):
        every = dyn.layers[i].keys
        assert every.shape[-2] == seen and torch.allclose(every[:, :, a.positions], a.keys, atol=1e-5)
        rows = b.positions if b.positions.dim() == 2 else b.positions[None]
        kept = torch.zeros(rows.shape[0], seen, dtype=torch.bool)
        kept.scatter_(1, rows, True)
        _kept[i] = (kept, a.sliding_window if a.layer_type == SLIDING_ATTENTION else None, seen)
    before = model.config._attn_implementation
    model.set_attn_implementation(REFERENCE)
    try:
        ids, pos, tokens, first = torch.tensor([question_ids]), seen, [], None
        with torch.inference_mode():
            for _ in range(NEW_TOKENS):
                out = model(input_ids=ids, cache=dyn, position_ids=torch.arange(pos, pos + ids.shape[1])[None], use_cache=True)
                first = out.logits if first is None else first
                pos += ids.shape[1]
                ids = out.logits[:, -1:].argmax(-1)
                tokens.append(int(ids))
    finally:
        model.set_attn_implementation(before)
    return first, tokens


def first_positions(model, run):
    """The ``position_ids`` of every forward pass ``run()`` makes."""
    seen = []
    inner = model.model
    handle = inner.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["position_ids"][0].tolist()), with_kwargs=True)
    try:
        result = run()
    finally:
        handle.remove()
    return seen, result


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def setup(request):
    lm = loaded(request.param)
    with sliding_window(lm, WINDOW):
        parts = prompt_ids(lm)
        cache = prefill(lm.model, parts.context_ids)
        stats = attention_scores(lm.model, parts.context_ids, parts.question_ids, ["question", "window:8"])
        yield lm, parts, cache, stats


def test_q2c_keeping_everything_generates_exactly_as_without_selection(setup):
    lm, parts, cache, stats = setup
    plain = greedy(lm.model, lm.tokenizer, cache, parts.question_ids, max_new_tokens=NEW_TOKENS)
    data = kvcodec.encode(cache, "q2c:keep=1.0 identity", attention=stats)
    received = kvcodec.decode(data)
    assert split_sections(data) == split_sections(kvcodec.encode(cache, "identity"))
    again = greedy(lm.model, lm.tokenizer, received, parts.question_ids, max_new_tokens=NEW_TOKENS)
    assert again.token_ids == plain.token_ids and torch.equal(again.first_logits, plain.first_logits)


def split_sections(data: bytes) -> bytes:
    return data[wire.load_header(data).size :]


@pytest.mark.parametrize("spec", ["q2c:keep=0.5 identity", "snapkv:keep=0.5,window=8 identity"])
def test_selected_cache_continues_at_the_right_positions(setup, spec):
    lm, parts, cache, stats = setup
    if spec.startswith("snapkv") and cache[0].kv_heads == 1:
        pytest.skip("per-head positions need several KV heads (SmolLM2 has 3, Gemma-3 1)")
    model = lm.model
    seen = cache[0].seen_tokens
    data = kvcodec.encode(cache, spec, attention=stats)
    payload = wire.load(data)
    received = kvcodec.decode(data)
    # the payload carries the kept positions (per KV head for snapkv on SmolLM's 3 KV heads)
    assert all((l.positions is None) == r.has_contiguous_positions for l, r in zip(payload.layers, received))
    assert any(l.positions is not None for l in payload.layers)
    for a, b in zip(cache, received):
        assert b.seen_tokens == seen and b.seq_len == -(-a.seq_len // 2)
        assert b.positions.dim() == (2 if spec.startswith("snapkv") and a.kv_heads > 1 else 1)
    sliding = [l for l in received if l.layer_type == SLIDING_ATTENTION]
    assert bool(sliding) == (lm.name == "gemma3-270m")
    assert all(l.sliding_window == WINDOW and l.seen_tokens > WINDOW for l in sliding)

    positions, gen = first_positions(
        model, lambda: greedy(model, lm.tokenizer, received, parts.question_ids, max_new_tokens=NEW_TOKENS)
    )
    q = len(parts.question_ids)
    assert positions[0] == list(range(seen, seen + q))  # the receiver starts at seen_tokens
    assert [p[0] for p in positions[1:]] == list(range(seen + q, seen + q + len(positions) - 1))
    assert len(gen.token_ids) >= 1

    ref_logits, ref_tokens = reference_generation(lm, parts.context_ids, cache, received, parts.question_ids)
    got, _ = _forward(model, received, torch.tensor([parts.question_ids]), seen)
    assert torch.allclose(got, ref_logits, atol=1e-4 * ref_logits.abs().max().item()), (got - ref_logits).abs().max()
    assert gen.token_ids == ref_tokens[: len(gen.token_ids)]
    # a receiver that ignored the selection (as if the kept tokens were the first ones) differs
    renumbered = received.map(lambda _i, l: l.replace(seen_tokens=l.seq_len, positions=torch.arange(l.seq_len)))
    wrong, _ = _forward(model, renumbered, torch.tensor([parts.question_ids]), renumbered[0].seen_tokens)
    assert not torch.allclose(wrong, ref_logits, atol=1e-2)


def test_caches_with_different_selections_decode_together_as_one_batch(setup):
    """The harness batches every pipeline of a sample: caches of one geometry whose selectors
    kept different tokens share a batch, each row masked by its own positions."""
    lm, parts, cache, stats = setup
    specs = ["q2c:keep=0.5 identity", "random:keep=0.5 identity", "streamingllm:keep=0.5 identity", "q2c:keep=0.25 identity"]
    received = [kvcodec.decode(kvcodec.encode(cache, s, attention=stats)) for s in specs]
    groups = receiver_batches(received, 8)
    assert [g.members for g in groups] == [(0, 1, 2), (3,)]
    batch = groups[0]
    # Gemma's shrunk sliding window makes positions matter; SmolLM2's full attention does not
    assert (batch.positions is not None) == (lm.name == "gemma3-270m")
    q = parts.question_ids
    together = greedy_batch(lm.model, lm.tokenizer, batch.cache, q, max_new_tokens=NEW_TOKENS, positions=batch.positions)
    nll = answer_nll(lm.model, batch.cache, q, q[-3:], positions=batch.positions)
    for row, r in enumerate(received[:3]):
        alone = greedy(lm.model, lm.tokenizer, r, q, max_new_tokens=NEW_TOKENS)
        scale = alone.first_logits.abs().max().item()
        assert torch.allclose(together[row].first_logits, alone.first_logits, atol=1e-4 * scale)
        assert together[row].token_ids == alone.token_ids
        assert torch.allclose(nll[row], answer_nll(lm.model, r, q, q[-3:])[0], atol=1e-4)
    if batch.positions is not None:  # rows masked by row 0's positions would differ
        wrong = greedy_batch(lm.model, lm.tokenizer, batch.cache, q, max_new_tokens=1, positions=tuple(
            p[:1].expand_as(p) for p in batch.positions))
        assert not torch.allclose(wrong[1].first_logits, together[1].first_logits, atol=1e-3)
