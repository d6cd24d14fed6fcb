"""Answer scorers against hand-checked values, and the paired bootstrap."""

from __future__ import annotations

import json
import math
import re
import string
from pathlib import Path

import numpy as np
import pytest

from kvcodec.scoring import (
    PercentOfFull,
    exact_match,
    extract_answer,
    hotpot_f1,
    hotpot_scores,
    is_abstention,
    normalize_answer,
    normalize_triviaqa,
    paired_bootstrap_ci,
    squad_scores,
    token_f1,
    triviaqa_scores,
)


# ----------------------------------------------------------------------------- normalization
@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Beatles", "beatles"),
        ("beatles", "beatles"),
        ("The theater", "theater"),  # "the" inside a word stays
        ("Anna and the anthem", "anna and anthem"),
        ("an apple a day", "apple day"),
        ("A", ""),
        ("U.S.", "us"),
        ("well-known", "wellknown"),  # ASCII hyphen is punctuation: deleted, not a space
        ("state-of-the-art", "stateoftheart"),  # so "the" is then inside a word
        ("1990–1995", "1990–1995"),  # en dash is not in string.punctuation
        ("“Hello”", "“hello”"),  # neither are curly quotes
        ("Rock ’n’ roll", "rock ’n’ roll"),
        ("a’s", "’s"),  # ’ is a word boundary for \b, so the article "a" goes
        ("  New\tYork \n City ", "new york city"),
        ("$1,000.50!", "100050"),
        ("", ""),
        ("...", ""),
        ("ÉCOLE the École", "école école"),  # unicode lower-casing
    ],
)
def test_normalize_answer_matches_the_official_rules(text, expected):
    assert normalize_answer(text) == expected


def _reference_squad(s: str) -> str:
    """evaluate-v2.0.py's normalize_answer, written out step by step."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", s)
    return " ".join(s.split())


def _reference_triviaqa(s: str) -> str:
    """triviaqa_evaluation.py's normalize_answer, written out step by step."""
    s = s.replace("_", " ").lower()
    s = "".join(" " if ch in set(string.punctuation + "\u2018\u2019\u00b4`") else ch for ch in s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split()).strip()


def test_normalizers_agree_with_the_official_procedure_on_real_text():
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad-v2-dev.json"
    if not path.is_file():
        pytest.skip("shared evaluation data not found")
    doc = json.loads(path.read_text(encoding="utf-8"))
    texts = [p["context"] for a in doc["data"] for p in a["paragraphs"][:5]]
    texts += [x["text"] for a in doc["data"] for p in a["paragraphs"] for q in p["qas"] for x in q["answers"]]
    texts += ["İstanbul", "ǅemal", "ﬁ", "a\u00a0b", "x\u2028y", "Ⅻ"]
    for text in texts:
        assert normalize_answer(text) == _reference_squad(text)
        assert normalize_triviaqa(text) == _reference_triviaqa(text)


def test_exact_match_after_normalization():
    assert exact_match("The Beatles", "beatles") == 1.0
    assert exact_match("the Beatles.", "Beatles") == 1.0
    assert exact_match("U.S.", "US") == 1.0
    assert exact_match("U.S.", "U S") == 0.0
    assert exact_match("theater", "ater") == 0.0
    assert exact_match("new york", "york new") == 0.0
    assert exact_match("a b", "b a") == 1.0  # both are "b" once the article goes


def test_token_f1_hand_checked():
    assert token_f1("new york", "york new") == 1.0
    # pred [cat, sat, on, mat] vs gold [cat, on, mat]: P = 3/4, R = 1 → 6/7
    assert token_f1("The cat sat on the mat", "cat on mat") == pytest.approx(6 / 7)
    assert token_f1("Paris", "London") == 0.0


def test_token_f1_counts_repeated_tokens_with_a_multiset():
    # "cat cat" vs "cat": one shared token (Counter &), P = 1/2, R = 1 → 2/3 (a set would give 1)
    assert token_f1("cat cat", "cat") == pytest.approx(2 / 3)
    # gold has "new" twice: overlap min(1, 2) = 1 for "new", + "york" → 2; P = 1, R = 2/3 → 0.8
    assert token_f1("new york", "new new york") == pytest.approx(0.8)


def test_empty_prediction_and_empty_gold():
    assert token_f1("", "") == 1.0
    assert exact_match("", "") == 1.0
    assert token_f1("the", "") == 1.0  # normalizes to no tokens
    assert token_f1("", "Paris") == 0.0
    assert token_f1("Paris", "") == 0.0


def test_squad_unanswerable_rule():
    assert squad_scores("", []) == {"f1": 1.0, "em": 1.0}
    assert squad_scores("  The. ", []) == {"f1": 1.0, "em": 1.0}  # normalizes to empty
    assert squad_scores("Paris", []) == {"f1": 0.0, "em": 0.0}
    assert squad_scores("", ["Paris"]) == {"f1": 0.0, "em": 0.0}
    # abstention replies count as empty ...
    assert squad_scores("Unanswerable.", []) == {"f1": 1.0, "em": 1.0}
    assert squad_scores("No answer", []) == {"f1": 1.0, "em": 1.0}
    assert squad_scores("I don't know.", ["Paris"]) == {"f1": 0.0, "em": 0.0}
    # ... unless turned off (the official script has no such step)
    assert squad_scores("unanswerable", [], abstentions=False) == {"f1": 0.0, "em": 0.0}


def test_squad_drops_golds_that_normalize_to_empty():
    # real SQuAD dev answers include "." — dropped, as evaluate-v2.0.py does
    assert squad_scores("interventionism", [".", "interventionism"]) == {"f1": 1.0, "em": 1.0}
    assert squad_scores("", ["."]) == {"f1": 1.0, "em": 1.0}  # nothing left: unanswerable


def test_squad_takes_the_max_over_golds():
    golds = ["Denver Broncos", "Broncos", "the Broncos"]
    assert squad_scores("Denver Broncos", golds) == {"f1": 1.0, "em": 1.0}
    assert squad_scores("The Broncos!", golds) == {"f1": 1.0, "em": 1.0}
    # "broncos team": vs "denver broncos" F1 1/2, vs "broncos" P 1/2 R 1 → 2/3
    got = squad_scores("Broncos team", golds)
    assert got["em"] == 0.0 and got["f1"] == pytest.approx(2 / 3)
    assert list(got) == ["f1", "em"]


def test_is_abstention():
    for text in ("", "  ", "The.", "Unanswerable", "unanswerable.", "NO ANSWER", "Cannot be answered."):
        assert is_abstention(text), text
    for text in ("none", "nothing", "unknown", "Paris", "no"):
        assert not is_abstention(text), text


# ----------------------------------------------------------------------------- HotpotQA, TriviaQA
def test_hotpot_yes_no_rule():
    assert token_f1("yes it is", "yes") == pytest.approx(0.5)
    assert hotpot_f1("yes it is", "yes") == 0.0  # official HotpotQA: no partial credit on yes/no
    assert hotpot_f1("no", "yes") == 0.0
    assert hotpot_f1("Yes.", "yes") == 1.0
    assert hotpot_f1("noanswer", "Paris") == 0.0
    assert hotpot_f1("the Eiffel Tower", "Eiffel Tower in Paris") == pytest.approx(2 * (1 * 0.5) / 1.5)
    assert hotpot_f1("", "Paris") == 0.0
    assert hotpot_scores("Yes", ["yes"]) == {"f1": 1.0, "em": 1.0}
    assert hotpot_scores("1887", ["1887", "in 1887"]) == {"f1": 1.0, "em": 1.0}
    with pytest.raises(ValueError):
        hotpot_scores("x", ["."])


def test_triviaqa_normalization_and_aliases():
    assert normalize_triviaqa("U.S.") == "u s"  # punctuation becomes a space here
    assert normalize_triviaqa("Rock_and_Roll") == "rock and roll"
    assert normalize_triviaqa("O’Neill") == "o neill"  # ’ is in TriviaQA's extra set
    assert normalize_triviaqa("The Who") == "who"
    golds = ["Onion", "Allium cepa", "Bulb onion"]
    assert triviaqa_scores("The onion.", golds) == {"em": 1.0, "f1": 1.0}
    got = triviaqa_scores("a bulb", golds)
    assert got["em"] == 0.0 and got["f1"] == pytest.approx(2 / 3)
    assert triviaqa_scores("onions", golds) == {"em": 0.0, "f1": 0.0}
    assert triviaqa_scores("", golds) == {"em": 0.0, "f1": 0.0}
    with pytest.raises(ValueError):
        triviaqa_scores("x", ["(", "..."])


def test_extract_answer():
    assert extract_answer("Paris\nQuestion: What is ...\nAnswer: Rome") == "Paris"
    assert extract_answer("\n\n  Answer: Paris.  \n") == "Paris."
    assert extract_answer("answer:Paris") == "Paris"
    assert extract_answer("   \n\t") == ""
    assert extract_answer("") == ""


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_identical_lists_give_exactly_100():
    scores = np.random.default_rng(1).random(57)
    ci = paired_bootstrap_ci(scores, scores.copy())
    assert isinstance(ci, PercentOfFull)
    assert (ci.percent, ci.low, ci.high) == (100.0, 100.0, 100.0)
    assert ci.n == 57 and ci.n_resamples == 2000 and ci.confidence == 0.95


def test_bootstrap_known_shift():
    full = np.random.default_rng(2).random(40) + 0.1
    half = paired_bootstrap_ci(full, full * 0.5)  # every resample's ratio is exactly 50 %
    assert half.percent == pytest.approx(50.0) and half.low == pytest.approx(50.0) and half.high == pytest.approx(50.0)
    # 80 of 100 right where the full cache got all 100: 80 %, binomial s.e. 4 points
    ci = paired_bootstrap_ci([1.0] * 100, [1.0] * 80 + [0.0] * 20, seed=3)
    assert ci.percent == pytest.approx(80.0)
    assert 70.0 <= ci.low <= 74.5 and 85.5 <= ci.high <= 90.0


def test_bootstrap_is_paired():
    # pipeline = full on every sample but one: an unpaired bootstrap would give a wide interval
    full = np.random.default_rng(4).integers(0, 2, 200).astype(float)
    pipe = full.copy()
    pipe[np.flatnonzero(full)[0]] = 0.0
    ci = paired_bootstrap_ci(full, pipe)
    assert ci.high <= 100.0 and ci.low >= 95.0


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(5)
    full, pipe = rng.random(300), rng.random(300)
    a = paired_bootstrap_ci(full, pipe, seed=7)
    assert paired_bootstrap_ci(list(full), list(pipe), seed=7) == a
    assert paired_bootstrap_ci(full, pipe, seed=8) != a
    assert a.low < a.percent < a.high


def test_bootstrap_large_n_uses_batches_deterministically():
    rng = np.random.default_rng(6)
    full = rng.integers(0, 2, 5000).astype(float)
    pipe = full * (rng.random(5000) < 0.9)
    a = paired_bootstrap_ci(full, pipe, n_resamples=1000)
    assert a == paired_bootstrap_ci(full, pipe, n_resamples=1000)
    assert 85.0 < a.low < a.percent < a.high < 95.0


def test_bootstrap_zero_full_mean_and_degenerate_resamples():
    ci = paired_bootstrap_ci([0.0, 0.0, 0.0], [1.0, 0.0, 0.0])
    assert math.isnan(ci.percent) and math.isnan(ci.low) and math.isnan(ci.high)
    # resamples that miss the single full-cache success: x/0 → inf, 0/0 left out
    ci = paired_bootstrap_ci([1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], n_resamples=500)
    assert ci.percent == 100.0 and ci.high == math.inf and ci.low == 0.0


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0, 0.0], [1.0])
    with pytest.raises(ValueError):
        paired_bootstrap_ci([], [])
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0, math.nan], [1.0, 1.0])
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0], [1.0], n_resamples=0)
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0], [1.0], confidence=1.0)
