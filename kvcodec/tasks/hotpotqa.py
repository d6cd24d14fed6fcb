"""HotpotQA multi-hop question answering, distractor setting (Yang et al., 2018, "HotpotQA:
A Dataset for Diverse, Explainable Multi-hop Question Answering", EMNLP;
https://hotpotqa.github.io/, CC BY-SA 4.0).

Files (the format is recognized from the content, not the name):

- ``hotpotqa-dev-distractor.jsonl``: JSON lines ``{"question_id", "question_text",
  "answers_objects": [{"spans": [...]}], "contexts": [{"title", "paragraph_text",
  "is_supporting"}]}`` (usually 10 paragraphs: the 2 gold ones and 8 distractors);
- ``hotpot_dev_distractor_v1.json``, the official release: a JSON array of ``{"_id",
  "question", "answer", "context": [[title, [sentence, ...]], ...], "supporting_facts"}``;
  a paragraph's text is its sentences joined with one space.

Sample: context = the paragraphs in file order, each ``"{title}: {text}"``, joined with a
blank line (``"\\n\\n"``); question = the question; answers = the distinct spans (or the
official ``answer``). Metrics: ``f1`` (primary) and ``em`` of
:func:`kvcodec.scoring.hotpot_scores`, the official answer metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvcodec.scoring import extract_answer, hotpot_scores, normalize_answer
from kvcodec.tasks.base import DataError, DataSource, Sample, Task, register, select
from kvcodec.tasks.files import find_source, need, read_json, read_jsonl, read_text

__all__ = ["SOURCE", "HotpotQATask", "read_hotpotqa"]

SOURCE = DataSource(
    "HotpotQA distractor dev",
    ("hotpotqa-dev-distractor.jsonl", "hotpot_dev_distractor_v1.json"),
    "https://hotpotqa.github.io/",
)


def read_hotpotqa(path: Path) -> list[dict[str, Any]]:
    """``[{"id", "question", "answers": [...], "paragraphs": [(title, text)], "supporting":
    [titles]}]`` from either format, in file order."""
    text = read_text(path)
    if text.lstrip()[:1] == "[":
        return [_official(rec, path, f"record {i + 1}") for i, rec in enumerate(read_json(path, text))]
    return [_jsonl(rec, path, f"record {i + 1}") for i, rec in enumerate(read_jsonl(path, text))]


def _jsonl(rec: Any, path: Path, where: str) -> dict[str, Any]:
    answers: list[str] = []
    for i, obj in enumerate(need(rec, "answers_objects", list, path, where)):
        for span in need(obj, "spans", list, path, f"{where}.answers_objects[{i}]"):
            if isinstance(span, str) and span not in answers:
                answers.append(span)
    paragraphs, supporting = [], []
    for i, ctx in enumerate(need(rec, "contexts", list, path, where)):
        cw = f"{where}.contexts[{i}]"
        title = need(ctx, "title", str, path, cw)
        paragraphs.append((title, need(ctx, "paragraph_text", str, path, cw)))
        if ctx.get("is_supporting"):
            supporting.append(title)
    return {
        "id": str(need(rec, "question_id", (str, int), path, where)),
        "question": need(rec, "question_text", str, path, where).strip(),
        "answers": answers,
        "paragraphs": paragraphs,
        "supporting": supporting,
    }


def _official(rec: Any, path: Path, where: str) -> dict[str, Any]:
    paragraphs = []
    for i, item in enumerate(need(rec, "context", list, path, where)):
        ok = isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], list)
        if not ok or not all(isinstance(s, str) for s in item[1]):
            raise DataError(f"{path}: {where}.context[{i}] is not [title, [sentence, ...]]")
        paragraphs.append((item[0], " ".join(item[1])))
    facts = rec.get("supporting_facts") or []
    supporting = []
    for fact in facts:
        if isinstance(fact, list) and fact and fact[0] not in supporting:
            supporting.append(fact[0])
    return {
        "id": str(need(rec, "_id", (str, int), path, where)),
        "question": need(rec, "question", str, path, where).strip(),
        "answers": [need(rec, "answer", str, path, where)],
        "paragraphs": paragraphs,
        "supporting": supporting,
    }


@register
class HotpotQATask(Task):
    """HotpotQA distractor dev; no options. Records without a gold answer that survives
    normalization are skipped (none in the shared copy)."""

    name = "hotpotqa"
    kind = "generate"
    metrics = ("f1", "em")
    sources = (SOURCE,)

    def _load(self, data_dir: Path, *, n: int | None, seed: int) -> list[Sample]:
        path = find_source(data_dir, SOURCE)
        pool = [r for r in read_hotpotqa(path) if any(normalize_answer(a) for a in r["answers"])]
        return [
            Sample(
                id=r["id"],
                task=self.name,
                context="\n\n".join(f"{title}: {text}" for title, text in r["paragraphs"]),
                question=r["question"],
                answers=r["answers"],
                meta={"paragraphs": len(r["paragraphs"]), "supporting": list(r["supporting"])},
            )
            for r in select(pool, n, seed)
        ]

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        """Official HotpotQA ``f1`` and ``em`` of the extracted reply."""
        return hotpot_scores(extract_answer(prediction), sample.answers)
