"""MMLU multiple choice, 57 subjects (Hendrycks et al., 2021, "Measuring Massive Multitask
Language Understanding", ICLR; https://github.com/hendrycks/test, MIT; the shared copy
holds 52 of the subjects).

Files: ``mmlu/test/{subject}_test.csv`` and ``mmlu/dev/{subject}_dev.csv`` (the official
``data/test`` and ``data/dev`` folders of ``data.tar`` are accepted too). Each row is
``question, choice A, choice B, choice C, choice D, answer``; a first row
``question,choice0,choice1,choice2,choice3,answer`` is a header and skipped; ``answer`` is
the index ``0``–``3`` (shared copy) or the letter ``A``–``D`` (official files).

Sample: the standard 5-shot prompt of Hendrycks et al.'s ``evaluate.py``, cut before the
final answer cue. context = ``"The following are multiple choice questions (with
answers) about {subject with spaces}.\\n\\n"``, then for each of the first ``shots`` dev
rows ``"{question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer: {letter}\\n\\n"``, then the
test row's ``"{question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\n"``; question = ``""``; the
receiver appends :attr:`MMLUTask.answer_cue` (``"Answer:"``) and takes the choice letter
with the highest next-token logit. Metric: ``accuracy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from kvcodec.tasks.base import DataError, DataSource, Sample, Task, TaskError, register, select
from kvcodec.tasks.files import read_csv

__all__ = ["LETTERS", "SOURCE", "MMLUTask", "format_question", "mmlu_folder", "read_mmlu_csv"]

SOURCE = DataSource(
    "MMLU",
    ("mmlu/dev/*_dev.csv and mmlu/test/*_test.csv", "data/dev/*_dev.csv and data/test/*_test.csv"),
    "https://github.com/hendrycks/test",
)
LETTERS = ("A", "B", "C", "D")
_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


def mmlu_folder(data_dir: Path) -> Path:
    """The folder holding ``dev/`` and ``test/``: ``mmlu/``, else ``data/``."""
    for name in ("mmlu", "data"):
        if (data_dir / name / "test").is_dir():
            return data_dir / name
    raise DataError(f"{data_dir / 'mmlu' / 'test'}: no such folder (nor data/test); get MMLU from {SOURCE.url}")


def read_mmlu_csv(path: Path) -> list[tuple[str, tuple[str, str, str, str], int]]:
    """``(question, choices, answer index)`` for every row of one subject's CSV file."""
    rows = read_csv(path)
    if rows and [c.strip().lower() for c in rows[0]] == _HEADER:
        rows = rows[1:]
    out = []
    for r, row in enumerate(rows):
        if not row:
            continue
        if len(row) != 6:
            raise DataError(f"{path}: row {r + 1} has {len(row)} fields, not 6 (question, 4 choices, answer)")
        answer = row[5].strip().upper()
        if answer in ("0", "1", "2", "3"):
            label = int(answer)
        elif answer in LETTERS:
            label = LETTERS.index(answer)
        else:
            raise DataError(f"{path}: row {r + 1}: answer {row[5]!r} is neither 0-3 nor A-D")
        out.append((row[0], (row[1], row[2], row[3], row[4]), label))
    return out


def format_question(question: str, choices: Iterable[str]) -> str:
    """``"{question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\n"``."""
    return question + "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, choices)) + "\n"


def _subject_names(option: Any) -> list[str]:
    """The subjects an option names, sorted, without repeats or blanks (a list of names or a
    comma-separated string); TaskError otherwise."""
    names = option.split(",") if isinstance(option, str) else option
    try:
        return sorted({str(s).strip() for s in names if str(s).strip()})
    except TypeError:
        raise TaskError(f"mmlu: subjects must be a list of names or a comma-separated string, got {option!r}") from None


def _subjects(option: Any, available: list[str]) -> list[str]:
    if option is None:
        return available
    chosen = _subject_names(option)
    if not chosen:
        raise TaskError("mmlu: subjects names no subject")
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise TaskError(f"mmlu: unknown subject {unknown[0]!r} (subjects: {', '.join(available)})")
    return chosen


@register
class MMLUTask(Task):
    """MMLU test questions with the 5-shot dev prompt. Options: ``shots`` (default 5,
    0 … the dev rows of a subject) and ``subjects`` (default ``None``: all; else names
    such as ``"anatomy"``, as a list or comma-separated). Samples are drawn uniformly
    from all test rows of the chosen subjects (so subjects appear in proportion to their
    size); ids are ``"{subject}/{row}"`` with ``row`` the 0-based data row."""

    name = "mmlu"
    kind = "choice"
    metrics = ("accuracy",)
    options = {"shots": 5, "subjects": None}
    sources = (SOURCE,)
    answer_cue = "Answer:"

    def _canonical(self, options: dict[str, Any]) -> dict[str, Any]:
        """``subjects`` as the comma-joined sorted names :meth:`_load` reads (order, repeats and
        spaces do not make another measurement)."""
        names = options.get("subjects")
        if isinstance(names, (str, list, tuple)):
            options = {**options, "subjects": ",".join(_subject_names(names))}
        return options

    def _load(self, data_dir: Path, *, n: int | None, seed: int, shots: Any, subjects: Any) -> list[Sample]:
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
            raise TaskError(f"mmlu: shots must be a non-negative integer, got {shots!r}")
        root = mmlu_folder(data_dir)
        available = sorted(p.name[: -len("_test.csv")] for p in (root / "test").glob("*_test.csv"))
        if not available:
            raise DataError(f"{root / 'test'}: no *_test.csv files; get MMLU from {SOURCE.url}")
        pool = []
        for subject in _subjects(subjects, available):
            for r, row in enumerate(read_mmlu_csv(root / "test" / f"{subject}_test.csv")):
                pool.append((subject, r, row))
        headers: dict[str, str] = {}
        samples = []
        for subject, r, (question, choices, label) in select(pool, n, seed):
            if subject not in headers:
                headers[subject] = self._header(root, subject, shots)
            samples.append(
                Sample(
                    id=f"{subject}/{r}",
                    task=self.name,
                    context=headers[subject] + format_question(question, choices),
                    question="",
                    answers=(LETTERS[label],),
                    choices=choices,
                    label=label,
                    meta={"subject": subject},
                )
            )
        return samples

    @staticmethod
    def _header(root: Path, subject: str, shots: int) -> str:
        text = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        if shots == 0:
            return text
        path = root / "dev" / f"{subject}_dev.csv"
        dev = read_mmlu_csv(path)
        if len(dev) < shots:
            raise DataError(f"{path}: {len(dev)} rows, fewer than the {shots} shots asked for")
        for question, choices, label in dev[:shots]:
            text += format_question(question, choices) + f"Answer: {LETTERS[label]}\n\n"
        return text

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        """``{"accuracy": 1.0}`` if ``prediction`` names the gold letter, else 0.0. The
        prediction is a letter, any case, optionally with white space, a trailing ``.`` or
        ``)`` or enclosing parentheses (``"b"``, ``" B"``, ``"(B)"``, ``"B."``); anything
        else scores 0.0."""
        text = prediction.strip().rstrip(".").strip()
        if text.startswith("(") and text.endswith(")"):
            text = text[1:-1].strip()
        text = text.rstrip(")").strip().upper()
        if sample.label is None:
            raise TaskError(f"mmlu: sample {sample.id!r} has no label")
        return {"accuracy": float(text == LETTERS[sample.label])}
