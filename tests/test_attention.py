"""Sender-side attention statistics (:mod:`kvcodec.attention`).

The probabilities the selectors read are proven to be the model's own attention, on both
models, for full and sliding-window layers (Gemma-3's window shrunk to 16 tokens so that
a short context crosses it):

- they equal transformers' eager attention (``output_attentions=True``) exactly;
- applied to the layer's values and output projection they reproduce, to float32
  rounding, the output of the model's SDPA attention — a different kernel with its own
  masks — so they are the probabilities the model actually uses;
- each row sums to 1, nothing attends to the future, and a sliding layer gives no
  weight to keys that left its window;
- the reduced statistics are the sums of those matrices over the requested rows.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from kvcodec.attention import attention_modules, attention_scores, capture_attention, eager_attention

CONTEXT = (
    "The Calder Head Light stands on a granite point at the mouth of Wrenfield Bay. Its tower was built "
    "between 1844 and 1847 by forty masons under the engineer Thomas Reddin, and its first keeper was "
    "Samuel Prentice."
)
QUESTION = "Who was the first keeper?"
WINDOW = 16


@functools.cache
def loaded(name: str):
    from kvcodec.models import load_model

    return load_model(name, device="cpu", dtype="float32")


@contextlib.contextmanager
def sliding_window(lm, window: int | None):
    """Gemma-3 with a shorter sliding window (config and attention modules), restored after."""
    config = lm.model.config
    if window is None or getattr(config, "sliding_window", None) is None:
        yield None
        return
    before = config.sliding_window
    modules = [m for m in attention_modules(lm.model) if getattr(m, "is_sliding", False)]
    config.sliding_window = window
    for m in modules:
        m.sliding_window = window
    try:
        yield window
    finally:
        config.sliding_window = before
        for m in modules:
            m.sliding_window = before


def prompt_ids(lm):
    from kvcodec.prompts import split_prompt

    return split_prompt(lm.tokenizer, CONTEXT, QUESTION, chat=lm.chat)


def test_unknown_requests_and_missing_questions_are_refused():
    with pytest.raises(ValueError, match="unknown attention statistic 'window:0'"):
        attention_scores(None, [1, 2], [3], ["window:0"])
    with pytest.raises(ValueError, match="needs the question's token ids"):
        attention_scores(None, [1, 2], [], ["question"])
    with pytest.raises(ValueError, match="at least one context token"):
        attention_scores(None, [], [3], ["all"])


@pytest.mark.model
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_captured_probabilities_are_the_models_attention(name):
    lm = loaded(name)
    model = lm.model
    with sliding_window(lm, WINDOW) as window:
        parts = prompt_ids(lm)
        ids = parts.context_ids + parts.question_ids
        length = len(ids)
        probs = capture_attention(model, ids, lambda _i, p: p.detach().clone())
        assert model.config._attn_implementation == "sdpa"  # restored

        # 1. transformers' eager attention, through its own output_attentions
        with eager_attention(model), torch.inference_mode():
            eager = model(input_ids=torch.tensor([ids]), output_attentions=True, use_cache=False).attentions
        assert len(eager) == len(probs)
        for p, e in zip(probs, eager):
            assert torch.equal(p, e)

        # 2. what the SDPA model computes: o_proj(probs · V) is each attention module's output
        modules = attention_modules(model)
        values, outputs = {}, {}
        hooks = []
        for i, m in enumerate(modules):
            hooks.append(m.v_proj.register_forward_hook(lambda _m, _a, out, i=i: values.__setitem__(i, out)))
            hooks.append(m.register_forward_hook(lambda _m, _a, out, i=i: outputs.__setitem__(i, out[0])))
        try:
            with torch.inference_mode():
                model(input_ids=torch.tensor([ids]), use_cache=False)
        finally:
            for h in hooks:
                h.remove()
        for i, (m, p) in enumerate(zip(modules, probs)):
            b, hq = p.shape[:2]
            v = values[i].view(b, length, -1, m.head_dim).transpose(1, 2)
            v = v.repeat_interleave(hq // v.shape[1], dim=1)
            mixed = (p @ v).transpose(1, 2).reshape(b, length, -1)
            expected = outputs[i]
            assert torch.allclose(m.o_proj(mixed), expected, atol=2e-5 * max(1.0, expected.abs().max().item())), i

        # 3. the shape of attention: rows sum to 1, causal, sliding layers within their window
        q = torch.arange(length)[:, None]
        k = torch.arange(length)[None, :]
        sliding = [getattr(m, "is_sliding", False) for m in modules]
        assert any(sliding) == (name == "gemma3-270m") and length > WINDOW
        for p, is_sliding in zip(probs, sliding):
            assert torch.allclose(p.sum(-1), torch.ones(()), atol=1e-5)
            assert (p[..., k > q] == 0).all()
            if is_sliding:
                assert window == WINDOW and (p[..., k <= q - WINDOW] == 0).all()
                assert (p[..., (k > q - WINDOW) & (k <= q)] > 0).any()

        # 4. the reduced statistics are sums of these probabilities
        t = len(parts.context_ids)
        stats = attention_scores(model, parts.context_ids, parts.question_ids, ["question", "all", "window:8"])
        for i, p in enumerate(probs):
            assert torch.allclose(stats["question"][i], p[..., t:, :t].sum(-2), atol=1e-6)
            assert torch.allclose(stats["all"][i], p[..., :t, :t].sum(-2), atol=1e-6)
            assert torch.allclose(stats["window:8"][i], p[..., t - 8 : t, :t].sum(-2), atol=1e-6)
            assert stats["all"][i].shape == (1, model.config.num_attention_heads, t)
