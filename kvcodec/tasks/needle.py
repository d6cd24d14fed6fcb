"""Needle in a haystack built from SQuAD 2.0: one answerable paragraph (the needle) hidden
at a chosen depth among paragraphs of other articles, padded to a target length in the
model's tokens, and asked the needle's question.

The construction follows the "needle in a haystack" test (G. Kamradt, 2023,
https://github.com/gkamradt/LLMTest_NeedleInAHaystack: a fact placed at a depth fraction
of a long filler text), with a SQuAD paragraph and question as the fact so that answers
are scored with the official SQuAD metric (Rajpurkar et al., 2016/2018). File: the same
SQuAD JSON as :mod:`kvcodec.tasks.squad`.

Algorithm, for a needle paragraph of ``N`` tokens, target ``length`` and ``depth``:

1. the distractors are all paragraphs of the other articles, in a per-sample order drawn
   with ``random.Random(f"needle:{seed}:{question id}")`` (the same for every length and
   depth, so a sweep varies only the cut);
2. before the needle: distractors are added while ``count_tokens`` of the text so far
   stays ≤ ``round(depth · (length − N))``; the first one that does not fit is cut to its
   longest whole-word prefix that does (its rest is dropped). Whole distractors are
   taken on an additive estimate (memoized piece counts); the cut is settled with exact
   counts of the whole text (see ``specs/tasks.md`` §4.5);
3. the needle follows, then (unless ``depth == 1``) more distractors the same way, while
   the whole context stays ≤ ``length`` tokens;
4. pieces are joined with a blank line (``"\\n\\n"``).

The context therefore never exceeds ``length`` tokens and falls short of it by less than
one word's tokens plus a separator's; ``meta["depth_actual"]`` is the share of the
distractor tokens that precede the needle.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from kvcodec.scoring import extract_answer, squad_scores
from kvcodec.tasks.base import DataError, Sample, Task, TaskError, register, select
from kvcodec.tasks.files import find_source
from kvcodec.tasks.squad import SOURCE, has_answer, read_squad

__all__ = ["NeedleTask", "build_haystack", "whitespace_tokens"]

SEPARATOR = "\n\n"
_WORD = re.compile(r"\S+")


def whitespace_tokens(text: str) -> int:
    """A stand-in token counter: the number of white-space separated words."""
    return len(text.split())


class _Exhausted(Exception):
    pass


def _join(parts: list[str]) -> str:
    return SEPARATOR.join(parts)


def _largest(ok: Callable[[int], bool], start: int, top: int) -> int:
    """Largest ``k`` in ``[0, top]`` with ``ok(k)`` (``ok`` true up to some ``k``, then
    false), searched by galloping out from ``start`` then bisecting; -1 if none."""
    start = min(max(start, 0), top)
    if ok(start):
        lo, step = start, 1
        while True:
            nxt = lo + step
            if nxt > top:
                hi = top + 1
                break
            if not ok(nxt):
                hi = nxt
                break
            lo, step = nxt, step * 2
    else:
        hi, step = start, 1
        while True:
            nxt = hi - step
            if nxt < 0:
                lo = -1
                break
            if ok(nxt):
                lo = nxt
                break
            hi, step = nxt, step * 2
    while hi - lo > 1:  # ok(lo) (or lo == -1), not ok(hi) (or hi == top + 1)
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


class _Pieces:
    """``count_tokens`` of one piece as it is appended: alone when it opens the text,
    after the separator otherwise; memoized (the same paragraphs recur across samples)."""

    def __init__(self, count: Callable[[str], int]):
        self.count, self.memo = count, {}

    def __call__(self, text: str, first: bool) -> int:
        key = (text, first)
        if key not in self.memo:
            self.memo[key] = self.count(text if first else SEPARATOR + text)
        return self.memo[key]


def _fill(
    fixed: list[str], limit: int, stream: Iterator[str], count: Callable[[str], int], pieces: _Pieces
) -> list[str]:
    """``fixed`` plus texts from ``stream`` while the joined text has ≤ ``limit`` tokens,
    the first text that does not fit cut to its longest whole-word prefix that does.

    Whole texts are taken on an additive estimate (exact count of ``fixed`` plus each
    piece's own count); the cut is then settled with exact counts of the whole text,
    reopening earlier texts if the estimate was too low."""
    parts = list(fixed)
    used = count(_join(parts)) if parts else 0
    for text in stream:
        c = pieces(text, not parts)
        if used + c <= limit:
            parts.append(text)
            used += c
            continue
        break
    else:
        raise _Exhausted
    ends = [m.end() for m in _WORD.finditer(text)]
    lead = SEPARATOR if parts else ""
    guess = _largest(lambda k: k == 0 or used + pieces.count(lead + text[: ends[k - 1]]) <= limit, 0, len(ends))
    while True:

        def ok(k: int) -> bool:
            return count(_join(parts + [text[: ends[k - 1]]] if k else parts)) <= limit

        k = _largest(ok, guess, len(ends))
        if k >= 0:
            return parts + [text[: ends[k - 1]]] if k else parts
        if len(parts) <= len(fixed):  # fixed alone is over the limit; the caller handles it
            return parts
        text = parts.pop()
        ends = [m.end() for m in _WORD.finditer(text)]
        guess = len(ends)


def build_haystack(
    needle: str,
    distractors: list[str],
    *,
    length: int,
    depth: float,
    count_tokens: Callable[[str], int],
    _pieces: _Pieces | None = None,
) -> tuple[str, dict[str, Any]]:
    """The context with ``needle`` at ``depth`` among ``distractors`` (taken in order),
    ≤ ``length`` tokens, and facts about it (``tokens``, ``needle_tokens``,
    ``depth_actual``, ``before_tokens``, ``after_tokens``). Raises ``ValueError`` if the
    distractors run out before the target length is reached."""
    pieces = _pieces if _pieces is not None else _Pieces(count_tokens)
    needle_tokens = count_tokens(needle)
    target = round(depth * max(0, length - needle_tokens))
    for _ in range(8):  # shrink the part before the needle if separators push it over
        stream = iter(distractors)
        try:
            before = _fill([], target, stream, count_tokens, pieces) if target > 0 else []
            head = before + [needle]
            excess = count_tokens(_join(head)) - length
            if excess > 0:
                target -= excess
                continue
            parts = head if depth >= 1.0 else _fill(head, length, stream, count_tokens, pieces)
        except _Exhausted:
            raise ValueError(f"not enough distractor text for {length} tokens") from None
        break
    else:  # pragma: no cover - a token counter that is far from additive
        raise ValueError(f"cannot fit the needle ({needle_tokens} tokens) into {length} tokens")
    after = parts[len(before) + 1 :]
    context = _join(parts)
    b = count_tokens(_join(before)) if before else 0
    a = count_tokens(_join(after)) if after else 0
    return context, {
        "tokens": count_tokens(context),
        "needle_tokens": needle_tokens,
        "before_tokens": b,
        "after_tokens": a,
        "depth_actual": b / (a + b) if a + b else float(depth),
    }


@register
class NeedleTask(Task):
    """Needle in a haystack over SQuAD 2.0 dev. Options:

    - ``count_tokens`` (required): a function ``str → int`` giving the number of tokens
      of a text for the model under test (:func:`whitespace_tokens` for tests);
    - ``length`` (default 1024; typically 512, 1024, 2048, 4096): target context length
      in those tokens;
    - ``depth`` (default 0.5): where the needle starts, as the fraction of the distractor
      tokens placed before it (0 = first, 1 = last);
    - ``max_needle_tokens`` (default 256): needles are the answerable questions whose
      paragraph has at most ``min(max_needle_tokens, length // 2)`` tokens (the same
      needles for every length ≥ 512 with the default).

    Sample ids are ``"{question id}/L{length}/d{depth}"``.
    """

    name = "needle"
    kind = "generate"
    metrics = ("f1", "em")
    options = {"length": 1024, "depth": 0.5, "count_tokens": None, "max_needle_tokens": 256}
    hidden_options = frozenset({"count_tokens"})
    sources = (SOURCE,)

    def _load(
        self,
        data_dir: Path,
        *,
        n: int | None,
        seed: int,
        length: Any,
        depth: Any,
        count_tokens: Any,
        max_needle_tokens: Any,
    ) -> list[Sample]:
        if count_tokens is None or not callable(count_tokens):
            raise TaskError("needle: count_tokens is required: a function str -> int counting the model's tokens")
        if isinstance(length, bool) or not isinstance(length, int) or length < 2:
            raise TaskError(f"needle: length must be an integer ≥ 2 (tokens), got {length!r}")
        if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0.0 <= float(depth) <= 1.0:
            raise TaskError(f"needle: depth must be a number from 0 to 1, got {depth!r}")
        if isinstance(max_needle_tokens, bool) or not isinstance(max_needle_tokens, int) or max_needle_tokens < 1:
            raise TaskError(f"needle: max_needle_tokens must be a positive integer, got {max_needle_tokens!r}")
        depth = float(depth)
        path = find_source(data_dir, SOURCE)
        paragraphs = read_squad(path)
        budget = min(max_needle_tokens, length // 2)
        needle_tokens: dict[int, int] = {}
        pieces = _Pieces(count_tokens)
        pool = [(p, qa) for p, para in enumerate(paragraphs) for qa in para.questions if has_answer(qa)]
        samples: list[Sample] = []
        for p, qa in select(pool, None, seed):
            if n is not None and len(samples) >= n:
                break
            para = paragraphs[p]
            if p not in needle_tokens:
                needle_tokens[p] = count_tokens(para.context)
            if needle_tokens[p] > budget:
                continue
            distractors = [d.context for d in paragraphs if d.article != para.article]
            random.Random(f"needle:{seed}:{qa.id}").shuffle(distractors)
            try:
                context, facts = build_haystack(
                    para.context, distractors, length=length, depth=depth, count_tokens=count_tokens, _pieces=pieces
                )
            except ValueError as exc:
                raise DataError(f"{path}: {exc} (question {qa.id})") from None
            samples.append(
                Sample(
                    id=f"{qa.id}/L{length}/d{depth:g}",
                    task=self.name,
                    context=context,
                    question=qa.question,
                    answers=qa.answers,
                    meta={"title": para.title, "length": length, "depth": depth, **facts},
                )
            )
        if not samples and n != 0:
            raise TaskError(f"needle: no SQuAD paragraph has at most {budget} tokens (length {length})")
        return samples

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        """SQuAD ``f1`` and ``em`` of the extracted reply against the needle's answers."""
        return squad_scores(extract_answer(prediction), sample.answers)
