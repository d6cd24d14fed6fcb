"""Rows of different samples decoded as one batch (kvcodec.generate.greedy_rows /
answer_nll_rows) answer exactly as each row alone, on both real models (CPU): different
context lengths, different questions, selected caches at explicit positions, quantized
caches, and Gemma-3's sliding window shrunk so that it cuts into the stored tokens."""

from __future__ import annotations

import pytest
import torch
from test_attention import WINDOW, loaded, sliding_window

import kvcodec
from kvcodec.attention import attention_scores
from kvcodec.generate import answer_nll, answer_nll_rows, greedy, greedy_rows, prefill
from kvcodec.prompts import split_prompt

pytestmark = pytest.mark.model

NEW_TOKENS = 4
SAMPLES = [
    ("The lighthouse on Calder Head was built in 1871 by the harbour board. Its keeper, Samuel Prentice, "
     "kept it for forty years with his daughter Ellen.", "Who built the lighthouse?"),
    ("Marie Curie was born in Warsaw in 1867. She moved to Paris in 1891 to study physics and mathematics "
     "at the Sorbonne, where she met Pierre Curie. They shared the Nobel Prize in Physics in 1903 with "
     "Henri Becquerel for their work on radioactivity.", "In which city was Marie Curie born?"),
]


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def rows(request):
    lm = loaded(request.param)
    with sliding_window(lm, WINDOW):
        caches, questions, answers = [], [], []
        for context, question in SAMPLES:
            parts = split_prompt(lm.tokenizer, context, question, chat=lm.chat)
            cache = prefill(lm.model, parts.context_ids)
            stats = attention_scores(lm.model, parts.context_ids, parts.question_ids, ["question"])
            for spec in ("identity", "int4:axis=channel", "q2c:keep=0.5 identity"):
                caches.append(kvcodec.decode(kvcodec.encode(cache, spec, attention=stats)))
                questions.append(parts.question_ids)
                answers.append(lm.tokenizer(" 1871 Warsaw", add_special_tokens=False)["input_ids"])
        yield lm, caches, questions, answers


def test_rows_of_different_samples_answer_as_each_row_alone(rows):
    lm, caches, questions, answers = rows
    assert len({sum(l.seq_len for l in c) for c in caches}) > 2  # lengths differ across samples and selections
    together = greedy_rows(lm.model, lm.tokenizer, caches, questions, max_new_tokens=NEW_TOKENS)
    nll = answer_nll_rows(lm.model, caches, questions, answers)
    for i, (cache, q, a) in enumerate(zip(caches, questions, answers)):
        alone = greedy(lm.model, lm.tokenizer, cache, q, max_new_tokens=NEW_TOKENS)
        scale = alone.first_logits.abs().max().item()
        assert torch.allclose(together[i].first_logits, alone.first_logits, atol=2e-4 * scale), i
        assert together[i].token_ids == alone.token_ids, i
        assert nll[i].item() == pytest.approx(answer_nll(lm.model, cache, q, a)[0].item(), abs=2e-4)


def test_argument_errors():
    with pytest.raises(ValueError):
        greedy_rows(None, None, [None], [[]])
    with pytest.raises(ValueError):
        answer_nll_rows(None, [None], [[1]], [[]])
