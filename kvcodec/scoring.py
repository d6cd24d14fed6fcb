"""Answer scoring for the evaluation tasks, and the paired bootstrap that compares a
pipeline with the uncompressed ("full") KV cache.

Answer metrics (every value is a fraction in ``[0, 1]``; 1.0 is a perfect answer):

- :func:`normalize_answer`, :func:`exact_match`, :func:`token_f1`, :func:`squad_scores`:
  the official SQuAD evaluation, ``evaluate-v2.0.py`` (Rajpurkar et al., 2016, "SQuAD:
  100,000+ Questions for Machine Comprehension of Text", EMNLP; Rajpurkar, Jia & Liang,
  2018, "Know What You Don't Know: Unanswerable Questions for SQuAD", ACL), reproduced
  rule for rule: lower-case; delete every character of ``string.punctuation``; replace
  the articles matched by ``\\b(a|an|the)\\b`` with a space; collapse white space. Token
  F1 counts the overlap of the two token multisets (``collections.Counter``); a gold
  answer that normalizes to ``""`` is dropped, and a question without any gold answer
  (SQuAD 2.0 unanswerable) scores 1 only for a prediction that normalizes to ``""``.
- :func:`hotpot_scores`: the official HotpotQA script ``hotpot_evaluate_v1.py`` (Yang et
  al., 2018, "HotpotQA: A Dataset for Diverse, Explainable Multi-hop Question
  Answering", EMNLP): SQuAD normalization, but F1 is 0 whenever either side normalizes to
  ``yes``, ``no`` or ``noanswer`` and the two differ.
- :func:`triviaqa_scores`: the official TriviaQA script ``triviaqa_evaluation.py`` (Joshi
  et al., 2017, "TriviaQA: A Large Scale Distantly Supervised Challenge Dataset for
  Reading Comprehension", ACL): ``_`` becomes a space, punctuation (``string.punctuation``
  plus ``‘ ’ ´ ```) becomes a space instead of being deleted, then articles and white
  space as in SQuAD.
- :func:`extract_answer`: what is kept of a generated continuation before scoring (its
  first non-empty line, without a leading ``Answer:``); :func:`is_abstention`: the
  replies counted as an empty ("no answer") prediction.

Comparison with the full cache: :func:`paired_bootstrap_ci` (Efron & Tibshirani, 1993,
"An Introduction to the Bootstrap", Chapman & Hall, ch. 6 and §13.3 for the percentile
interval).
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Iterable, Sequence

import attrs
import numpy as np

__all__ = [
    "ABSTENTIONS",
    "PercentOfFull",
    "exact_match",
    "extract_answer",
    "hotpot_f1",
    "hotpot_scores",
    "is_abstention",
    "normalize_answer",
    "normalize_triviaqa",
    "paired_bootstrap_ci",
    "squad_scores",
    "token_f1",
    "triviaqa_scores",
]

# str.translate tables: the same character-by-character mapping as the official scripts'
# generator expressions, only faster.
_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_TRIVIAQA_PUNCTUATION = string.punctuation + "\u2018\u2019\u00b4`"
_SPACE_PUNCTUATION = str.maketrans(_TRIVIAQA_PUNCTUATION, " " * len(_TRIVIAQA_PUNCTUATION))
_HOTPOT_SPECIAL = ("yes", "no", "noanswer")

#: Replies that mean "the passage does not answer this", compared with the prediction
#: after :func:`normalize_answer`; such a prediction is scored as the empty prediction.
#: Deliberately short: only phrases that cannot be real SQuAD answers ("none", "nothing"
#: and "unknown" can, and are not here).
ABSTENTIONS = frozenset(
    {
        "unanswerable",
        "question is unanswerable",
        "no answer",
        "not answerable",
        "cannot be answered",
        "question cannot be answered",
        "cannot answer",
        "passage does not answer question",
        "i dont know",
    }
)


# ----------------------------------------------------------------------------- SQuAD
def normalize_answer(text: str) -> str:
    """The official SQuAD normalization (``evaluate-v2.0.py``): lower-case, delete every
    character in ``string.punctuation`` (ASCII only: ``–`` or ``’`` stay), replace the
    articles ``\\b(a|an|the)\\b`` with a space (``theater`` keeps its ``the``), and join
    the white-space separated tokens with single spaces. ``"U.S."`` → ``"us"``,
    ``"The Beatles"`` → ``"beatles"``, ``"well-known"`` → ``"wellknown"``."""
    text = text.lower()
    text = text.translate(_DELETE_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match(prediction: str, gold: str) -> float:
    """1.0 if ``prediction`` and ``gold`` are equal after :func:`normalize_answer`, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _f1(pred: list[str], gold: list[str]) -> float:
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, gold: str) -> float:
    """Official SQuAD token F1 between the normalized token multisets (overlap counted with
    ``collections.Counter``, so a repeated token matches at most as often as it occurs in
    both). When either side has no tokens the score is 1.0 if both have none, else 0.0."""
    pred, ref = _tokens(prediction), _tokens(gold)
    if not pred or not ref:
        return float(pred == ref)
    return _f1(pred, ref)


def _squad_golds(golds: Iterable[str]) -> list[str]:
    kept = [g for g in golds if normalize_answer(g)]
    return kept or [""]  # no gold answer left: unanswerable, only "" is right


def squad_scores(prediction: str, golds: Sequence[str], *, abstentions: bool = True) -> dict[str, float]:
    """``{"f1": …, "em": …}`` of ``prediction`` against the gold answers, each maximized
    over the golds, as SQuAD 2.0's ``get_raw_scores`` does: golds that normalize to ``""``
    are dropped; with none left the question is unanswerable and both scores are 1.0 only
    for an empty prediction. With ``abstentions`` (the default) a prediction that
    :func:`is_abstention` counts as empty first; the official script has no such step
    (its predictions come from span extractors that output ``""``)."""
    if abstentions and is_abstention(prediction):
        prediction = ""
    refs = _squad_golds(golds)
    return {
        "f1": max(token_f1(prediction, g) for g in refs),
        "em": max(exact_match(prediction, g) for g in refs),
    }


def is_abstention(prediction: str) -> bool:
    """True if the prediction normalizes to ``""`` or to one of :data:`ABSTENTIONS`
    (``"Unanswerable."``, ``"No answer"``, ``"I don't know."`` …)."""
    norm = normalize_answer(prediction)
    return norm == "" or norm in ABSTENTIONS


# ----------------------------------------------------------------------------- HotpotQA
def hotpot_f1(prediction: str, gold: str) -> float:
    """Official HotpotQA answer F1: SQuAD tokens and overlap, but 0.0 when either side
    normalizes to ``yes``, ``no`` or ``noanswer`` and the two normalized strings differ
    (so ``"Yes, it is"`` earns nothing against ``"yes"``); 0.0 when either side is empty."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if (pred in _HOTPOT_SPECIAL or ref in _HOTPOT_SPECIAL) and pred != ref:
        return 0.0
    return _f1(pred.split(), ref.split())


def hotpot_scores(prediction: str, golds: Sequence[str]) -> dict[str, float]:
    """``{"f1": …, "em": …}``, each maximized over the (non-empty) gold answers."""
    refs = [g for g in golds if normalize_answer(g)]
    if not refs:
        raise ValueError("hotpot_scores needs at least one gold answer that is not empty after normalization")
    return {
        "f1": max(hotpot_f1(prediction, g) for g in refs),
        "em": max(exact_match(prediction, g) for g in refs),
    }


# ----------------------------------------------------------------------------- TriviaQA
def normalize_triviaqa(text: str) -> str:
    """The official TriviaQA normalization (``triviaqa_evaluation.py``): ``_`` → space,
    lower-case, every character of ``string.punctuation`` and of ``‘ ’ ´ ``` → space,
    articles ``\\b(a|an|the)\\b`` → space, white space collapsed. ``"U.S."`` → ``"u s"``."""
    text = text.replace("_", " ").lower()
    text = text.translate(_SPACE_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def triviaqa_scores(prediction: str, golds: Sequence[str]) -> dict[str, float]:
    """``{"em": …, "f1": …}`` under :func:`normalize_triviaqa`, maximized over the answer
    and its aliases (official script: F1 is 0.0 when nothing overlaps, including when
    either side is empty)."""
    refs = [normalize_triviaqa(g) for g in golds]
    refs = [r for r in refs if r]
    if not refs:
        raise ValueError("triviaqa_scores needs at least one gold answer that is not empty after normalization")
    pred = normalize_triviaqa(prediction)
    return {
        "em": max(float(pred == r) for r in refs),
        "f1": max(_f1(pred.split(), r.split()) for r in refs),
    }


# ----------------------------------------------------------------------------- generations
_ANSWER_PREFIX = re.compile(r"^\s*answer\s*:\s*", re.IGNORECASE)


def extract_answer(generation: str) -> str:
    """The part of a generated continuation that is scored: its first line that is not
    blank, stripped, without a leading ``Answer:`` (any case). A base model that goes on
    with a new ``Question:`` line after its answer is thus not penalized for it; a reply
    that is all white space gives ``""``."""
    for line in generation.splitlines():
        if line.strip():
            return _ANSWER_PREFIX.sub("", line).strip()
    return ""


# ----------------------------------------------------------------------------- bootstrap
@attrs.frozen
class PercentOfFull:
    """A pipeline's mean score as a percentage of the full cache's, with its paired
    bootstrap percentile interval. ``percent``, ``low`` and ``high`` are in % (100.0 = as
    good as the full cache); NaN where undefined (the full cache's mean score is 0)."""

    percent: float
    low: float
    high: float
    confidence: float  # e.g. 0.95
    n: int  # number of samples (pairs)
    n_resamples: int


def paired_bootstrap_ci(
    full_scores: Sequence[float],
    pipeline_scores: Sequence[float],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PercentOfFull:
    """``100 · mean(pipeline) / mean(full)`` with a paired bootstrap percentile interval.

    ``full_scores[i]`` and ``pipeline_scores[i]`` are the scores of the same sample with
    the full and the compressed KV cache. Each of ``n_resamples`` resamples draws ``n``
    sample indices uniformly with replacement (``numpy.random.default_rng(seed)``) and
    takes both lists at the same indices, so the pairing is kept; its statistic is
    ``100 · mean(pipeline[idx]) / mean(full[idx])``. The interval is the
    ``(1 − confidence)/2`` and ``(1 + confidence)/2`` percentiles of those statistics
    (linear interpolation between order statistics, numpy's default method) — the percentile interval of Efron &
    Tibshirani (1993), §13.3. A resample whose full mean is 0 gives ``+inf`` when its
    pipeline mean is positive (the interval is then unbounded above) and is left out when
    both are 0 (0/0). If ``mean(full) == 0`` the result is NaN throughout.

    Deterministic: the same inputs and ``seed`` give the same interval.
    Raises ``ValueError`` for lists of different or zero length, non-finite scores,
    ``n_resamples < 1`` or ``confidence`` outside ``(0, 1)``.
    """
    full = np.asarray(full_scores, dtype=np.float64).reshape(-1)
    pipe = np.asarray(pipeline_scores, dtype=np.float64).reshape(-1)
    if full.shape != pipe.shape:
        raise ValueError(f"paired scores need lists of one length, got {full.size} and {pipe.size}")
    if full.size == 0:
        raise ValueError("paired_bootstrap_ci needs at least one sample")
    if not (np.isfinite(full).all() and np.isfinite(pipe).all()):
        raise ValueError("scores must be finite numbers")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    n, n_resamples = full.size, int(n_resamples)
    full_mean = float(full.mean())
    if full_mean == 0.0:
        nan = math.nan
        return PercentOfFull(nan, nan, nan, confidence, n, n_resamples)
    percent = 100.0 * (float(pipe.mean()) / full_mean)

    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    chunk = max(1, (1 << 22) // n)  # resamples per batch: at most ~4M indices in memory
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        f, p = full[idx].mean(axis=1), pipe[idx].mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            stats[start : start + rows] = 100.0 * (p / f)
    stats = stats[~np.isnan(stats)]  # 0/0 resamples
    if stats.size == 0:
        return PercentOfFull(percent, math.nan, math.nan, confidence, n, n_resamples)
    stats.sort()
    alpha = (1.0 - confidence) / 2.0
    low, high = _percentile(stats, alpha), _percentile(stats, 1.0 - alpha)
    return PercentOfFull(percent, low, high, confidence, n, n_resamples)


def _percentile(ordered: np.ndarray, q: float) -> float:
    """The ``q`` quantile (0–1) of sorted values by linear interpolation between the order
    statistics at ``q·(m − 1)`` (numpy's default method), with ``+inf`` kept as such."""
    pos = q * (ordered.size - 1)
    i = int(math.floor(pos))
    frac = pos - i
    a = float(ordered[i])
    b = float(ordered[min(i + 1, ordered.size - 1)])
    if frac == 0.0 or a == b:
        return a
    if math.isinf(b):
        return b
    return a + (b - a) * frac
