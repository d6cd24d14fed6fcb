"""TriviaQA, closed book (Joshi et al., 2017, "TriviaQA: A Large Scale Distantly Supervised
Challenge Dataset for Reading Comprehension", ACL; https://nlp.cs.washington.edu/triviaqa/).

Files (the format is recognized from the content):

- ``triviaqa-closedbook.jsonl``: JSON lines ``{"context": "Question: …\\nAnswer:",
  "answer", "aliases": [...]}`` (a ``"question"`` field is used instead of ``context``
  when present); a record's id is ``triviaqa-{i}`` with ``i`` its 0-based position;
- ``unfiltered-web-dev.json`` (also under ``triviaqa-unfiltered/``), the official
  release: ``{"Data": [{"QuestionId", "Question", "Answer": {"Value", "Aliases"}}]}``.

Closed book: there is no evidence passage, so the transmitted context is a k-shot block
of OTHER questions of the same file with their answers; the receiver asks the sample's
question. Metrics: ``em`` (primary) and ``f1`` of :func:`kvcodec.scoring.triviaqa_scores`
(official TriviaQA normalization) against the answer and every alias, maximized.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import attrs

from kvcodec.scoring import extract_answer, normalize_triviaqa, triviaqa_scores
from kvcodec.tasks.base import DataError, DataSource, Sample, Task, TaskError, register, select
from kvcodec.tasks.files import find_source, need, read_jsonl

__all__ = ["SOURCE", "TriviaQATask", "TriviaQuestion", "read_triviaqa", "shot_block"]

SOURCE = DataSource(
    "TriviaQA (closed book)",
    ("triviaqa-closedbook.jsonl", "unfiltered-web-dev.json", "triviaqa-unfiltered/unfiltered-web-dev.json"),
    "https://nlp.cs.washington.edu/triviaqa/",
)


@attrs.frozen
class TriviaQuestion:
    id: str
    question: str
    answer: str  # the canonical answer, shown in shots
    aliases: tuple[str, ...]  # as in the file

    @property
    def golds(self) -> tuple[str, ...]:
        """Answer and aliases, distinct, in order, without those that normalize to ``""``."""
        out: list[str] = []
        for text in (self.answer, *self.aliases):
            if text not in out and normalize_triviaqa(text):
                out.append(text)
        return tuple(out)

    @property
    def scoreable(self) -> bool:
        """At least one gold answer survives normalization."""
        return any(normalize_triviaqa(text) for text in (self.answer, *self.aliases))


def _question(text: str) -> str:
    text = text.strip()
    if text.startswith("Question:"):
        text = text[len("Question:") :]
    if text.endswith("Answer:"):
        text = text[: -len("Answer:")]
    return text.strip()


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def read_triviaqa(path: Path) -> list[TriviaQuestion]:
    """Every question of the file, in file order (unscoreable ones included)."""
    records = read_jsonl(path)
    out = []
    if len(records) == 1 and "Data" in records[0]:  # official release
        for i, rec in enumerate(need(records[0], "Data", list, path, "the document")):
            where = f"Data[{i}]"
            ans = need(rec, "Answer", dict, path, where)
            value = need(ans, "Value", str, path, f"{where}.Answer")
            out.append(
                TriviaQuestion(
                    id=str(need(rec, "QuestionId", (str, int), path, where)),
                    question=need(rec, "Question", str, path, where).strip(),
                    answer=value,
                    aliases=_strings(ans.get("Aliases")),
                )
            )
        return out
    for i, rec in enumerate(records):
        where = f"record {i + 1}"
        if isinstance(rec.get("question"), str):
            question = rec["question"].strip()
        else:
            question = _question(need(rec, "context", str, path, where))
        answer = need(rec, "answer", str, path, where)
        aliases = rec.get("aliases") or []
        if not isinstance(aliases, list):
            raise DataError(f"{path}: {where}: 'aliases' is not a list")
        out.append(TriviaQuestion(f"triviaqa-{i}", question, answer, _strings(aliases)))
    return out


def shot_block(shots: list[TriviaQuestion]) -> str:
    """``"Question: {q}\\nAnswer: {a}"`` per shot, joined with a blank line."""
    return "\n\n".join(f"Question: {s.question}\nAnswer: {s.answer}" for s in shots)


@register
class TriviaQATask(Task):
    """TriviaQA closed book. Option ``shots`` (default 5, ≥ 1): the number of question/
    answer pairs in the context. They are drawn for each sample with
    ``random.Random(f"triviaqa:{seed}:{sample id}")`` from the file's other scoreable
    questions, never the sample itself nor a question with the same normalized text.
    Questions whose answer and aliases all normalize to ``""`` are skipped."""

    name = "triviaqa"
    kind = "generate"
    metrics = ("em", "f1")
    options = {"shots": 5}
    sources = (SOURCE,)

    def _load(self, data_dir: Path, *, n: int | None, seed: int, shots: Any) -> list[Sample]:
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
            raise TaskError(f"triviaqa: shots must be a positive integer, got {shots!r}")
        path = find_source(data_dir, SOURCE)
        pool = [q for q in read_triviaqa(path) if q.scoreable]
        keys = [normalize_triviaqa(q.question) for q in pool]
        same: dict[str, int] = {}
        for key in keys:
            same[key] = same.get(key, 0) + 1
        samples = []
        for i in select(range(len(pool)), n, seed):
            q = pool[i]
            if len(pool) - same[keys[i]] < shots:
                raise DataError(f"{path}: too few other questions for {shots} shots ({len(pool)} questions)")
            rng = random.Random(f"triviaqa:{seed}:{q.id}")
            picked: list[int] = []
            while len(picked) < shots:
                j = rng.randrange(len(pool))
                if keys[j] != keys[i] and j not in picked:
                    picked.append(j)
            samples.append(
                Sample(
                    id=q.id,
                    task=self.name,
                    context=shot_block([pool[j] for j in picked]),
                    question=q.question,
                    answers=q.golds,
                    meta={"shots": [pool[j].id for j in picked]},
                )
            )
        return samples

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        """TriviaQA ``em`` and ``f1`` of the extracted reply against answer and aliases."""
        return triviaqa_scores(extract_answer(prediction), sample.answers)
