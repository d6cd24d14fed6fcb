"""SQuAD 2.0 reading comprehension (Rajpurkar et al., 2016, EMNLP; Rajpurkar, Jia & Liang,
2018, ACL; https://rajpurkar.github.io/SQuAD-explorer/, CC BY-SA 4.0).

File: the official dev JSON, ``squad-v2-dev.json`` (the official name ``dev-v2.0.json``
is accepted too): ``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id",
"question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}``. A SQuAD 1.1
file (no ``is_impossible``) reads as all answerable.

Sample: context = the paragraph, verbatim; question = the question (stripped); answers =
the distinct gold texts (empty for an unanswerable question). Metrics: ``f1`` (primary)
and ``em`` of :func:`kvcodec.scoring.squad_scores` on :func:`kvcodec.scoring.extract_answer`
of the reply. Exact templates and decisions: ``specs/tasks.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from kvcodec.scoring import extract_answer, normalize_answer, squad_scores
from kvcodec.tasks.base import DataSource, Sample, Task, TaskError, register, select
from kvcodec.tasks.files import find_source, need, read_json

__all__ = ["SOURCE", "UNANSWERABLE_HINT", "SquadParagraph", "SquadQuestion", "SquadTask", "read_squad"]

SOURCE = DataSource(
    "SQuAD 2.0 dev", ("squad-v2-dev.json", "dev-v2.0.json"), "https://rajpurkar.github.io/SQuAD-explorer/"
)

#: Appended (after a space) to every question when unanswerable questions are included,
#: so that a generative model has a way to abstain; see ``specs/tasks.md``.
UNANSWERABLE_HINT = 'If the passage does not answer the question, reply "unanswerable".'


@attrs.frozen
class SquadQuestion:
    id: str
    question: str
    answers: tuple[str, ...]  # distinct gold texts, file order; () if unanswerable
    impossible: bool


@attrs.frozen
class SquadParagraph:
    article: int  # index of the article in the file
    title: str
    context: str
    questions: tuple[SquadQuestion, ...]


def read_squad(path: Path) -> list[SquadParagraph]:
    """Every paragraph of a SQuAD (1.1 or 2.0) JSON file, in file order."""
    doc = read_json(path)
    articles = need(doc, "data", list, path, "the document")
    out = []
    for a, article in enumerate(articles):
        where = f"data[{a}]"
        title = str(article.get("title", "")) if isinstance(article, dict) else ""
        for p, para in enumerate(need(article, "paragraphs", list, path, where)):
            pw = f"{where}.paragraphs[{p}]"
            context = need(para, "context", str, path, pw)
            questions = []
            for q, qa in enumerate(need(para, "qas", list, path, pw)):
                qw = f"{pw}.qas[{q}]"
                impossible = bool(qa.get("is_impossible", False)) if isinstance(qa, dict) else False
                texts: list[str] = []
                for i, ans in enumerate(need(qa, "answers", list, path, qw)):
                    text = need(ans, "text", str, path, f"{qw}.answers[{i}]")
                    if text not in texts:
                        texts.append(text)
                questions.append(
                    SquadQuestion(
                        id=str(need(qa, "id", (str, int), path, qw)),
                        question=need(qa, "question", str, path, qw).strip(),
                        answers=() if impossible else tuple(texts),
                        impossible=impossible,
                    )
                )
            out.append(SquadParagraph(a, title, context, tuple(questions)))
    return out


def has_answer(question: SquadQuestion) -> bool:
    """Answerable, with at least one gold text that does not normalize to ``""``."""
    return not question.impossible and any(normalize_answer(t) for t in question.answers)


@register
class SquadTask(Task):
    """SQuAD 2.0 dev. Option ``include_unanswerable`` (default ``False``): also sample
    the unanswerable questions, score them with the SQuAD 2.0 rule (1 only for an empty
    prediction; abstention replies such as "unanswerable" count as empty) and append
    :data:`UNANSWERABLE_HINT` to every question."""

    name = "squad"
    kind = "generate"
    metrics = ("f1", "em")
    options = {"include_unanswerable": False}
    sources = (SOURCE,)

    def _load(self, data_dir: Path, *, n: int | None, seed: int, include_unanswerable: Any) -> list[Sample]:
        if not isinstance(include_unanswerable, bool):
            raise TaskError(f"squad: include_unanswerable must be True or False, got {include_unanswerable!r}")
        path = find_source(data_dir, SOURCE)
        pool = [
            (para, qa)
            for para in read_squad(path)
            for qa in para.questions
            if has_answer(qa) or (include_unanswerable and qa.impossible)
        ]
        samples = []
        for para, qa in select(pool, n, seed):
            question = f"{qa.question} {UNANSWERABLE_HINT}" if include_unanswerable else qa.question
            samples.append(
                Sample(
                    id=qa.id,
                    task=self.name,
                    context=para.context,
                    question=question,
                    answers=qa.answers,
                    meta={"title": para.title, "answerable": not qa.impossible},
                )
            )
        return samples

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        """SQuAD 2.0 ``f1`` and ``em`` of the extracted reply (see :func:`squad_scores`)."""
        return squad_scores(extract_answer(prediction), sample.answers)
