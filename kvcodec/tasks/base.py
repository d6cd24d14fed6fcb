"""Evaluation samples, the task contract, the task registry and the data folder.

A task turns a public data set into :class:`Sample` s for the KV-cache protocol of
:mod:`kvcodec.prompts`: the sender prefills ``sample.context`` and transmits its KV cache;
the receiver appends ``sample.question`` (for chat models with the rest of the chat
template, see :func:`kvcodec.prompts.split_prompt`) and either decodes greedily
(``kind == "generate"``: the reply is scored with :meth:`Task.score`) or, for a
``kind == "choice"`` task, appends the task's :attr:`Task.answer_cue` and reads the
logits of the choice letters (the letter with the highest logit is the prediction).

Data sets are not shipped; a user downloads them (see :func:`resolve_data_dir` and
``specs/tasks.md``). Every loader reads its data set's format from any folder, is
deterministic (the same files, ``n``, ``seed`` and options give the same samples in the
same order) and reports a missing or malformed file with a one-line
:class:`DataError` naming the file.
"""

from __future__ import annotations

import abc
import os
import random
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence, TypeVar

import attrs

from kvcodec.errors import KVCodecError

__all__ = [
    "DATA_DIR_ENV",
    "DataError",
    "DataSource",
    "Sample",
    "TASKS",
    "Task",
    "TaskError",
    "UnknownTaskError",
    "canonical_task_options",
    "get_task",
    "register",
    "resolve_data_dir",
    "select",
]

#: Environment variable naming the data folder when no folder is given explicitly.
DATA_DIR_ENV = "KVCODEC_DATA_DIR"

T = TypeVar("T")


class TaskError(KVCodecError, ValueError):
    """A task is asked for something it cannot do: a bad option value or an unknown option."""


class UnknownTaskError(TaskError):
    """No task has the requested name; the one-line message lists the known names."""


class DataError(KVCodecError, ValueError):
    """The data folder is not given or does not exist, or a data file is missing or
    malformed; the one-line message names the folder or file (and, where it helps, the
    record and the field)."""


def _answers(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


@attrs.frozen
class Sample:
    """One evaluation item.

    ``context`` is what the sender prefills and transmits as a KV cache; ``question`` is
    what the receiver appends (``""`` for multiple choice, whose question is part of the
    context). ``answers`` are the gold answers and their aliases, scored with the maximum
    over them; empty means the question is unanswerable (SQuAD 2.0). ``choices`` are the
    texts of the options A, B, C, … and ``label`` the index of the right one (multiple
    choice only; ``None`` otherwise). ``meta`` is a small read-only dict of facts about
    the item (article title, subject, needle depth …); it is not part of the hash.
    """

    id: str
    task: str
    context: str
    question: str
    answers: tuple[str, ...] = attrs.field(converter=_answers)
    choices: tuple[str, ...] = attrs.field(default=(), converter=_answers)
    label: int | None = None
    meta: dict[str, Any] = attrs.field(factory=dict, converter=dict, hash=False)

    @property
    def answerable(self) -> bool:
        """False for a question without any gold answer (SQuAD 2.0 ``is_impossible``)."""
        return bool(self.answers) or self.label is not None


@attrs.frozen
class DataSource:
    """A data set a task reads: its name, the accepted paths relative to the data folder
    (the first is the one the shared copy and the error messages use) and where to get it."""

    name: str  # e.g. "SQuAD 2.0 dev"
    files: tuple[str, ...]  # relative paths, first = preferred
    url: str  # where a user downloads it

    def describe(self) -> str:
        alt = f" (or {', '.join(self.files[1:])})" if len(self.files) > 1 else ""
        return f"{self.files[0]}{alt} — {self.name}, from {self.url}"


class Task(abc.ABC):
    """An evaluation task. Subclasses set the class attributes and implement
    :meth:`_load` and :meth:`score`; instances are stateless and live in :data:`TASKS`.

    Attributes: ``name`` (registry key), ``kind`` (``"generate"`` or ``"choice"``),
    ``metrics`` (metric names, the primary one first), ``options`` (option name → default
    value accepted by :meth:`load`), ``sources`` (the data files it reads) and
    ``answer_cue`` (text a ``"choice"`` receiver appends before reading the letter logits).
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    options: ClassVar[Mapping[str, Any]] = {}
    hidden_options: ClassVar[frozenset[str]] = frozenset()
    sources: ClassVar[tuple[DataSource, ...]]
    answer_cue: ClassVar[str] = ""

    def canonical_options(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``options`` as a results record is identified by them: the task's defaults filled
        in, hidden options (runtime hooks such as needle's ``count_tokens``) and ``None``
        values left out, keys sorted — so a run with the defaults and a run that types the
        same values out are one measurement."""
        merged = {**self.options, **dict(options or {})}
        out = {}
        for k in sorted(merged):
            value, default = merged[k], self.options.get(k)
            if k in self.hidden_options or value is None:
                continue
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # depth 1 and 1.0 are one depth
            out[k] = value
        return self._canonical(out)

    def _canonical(self, options: dict[str, Any]) -> dict[str, Any]:
        """A task's own normalisation of :meth:`canonical_options` (e.g. a sorted subject list);
        the default keeps ``options`` as they are."""
        return options

    @property
    def primary_metric(self) -> str:
        """The metric a summary reports for this task (``metrics[0]``)."""
        return self.metrics[0]

    def load(self, data_dir: str | os.PathLike, *, n: int | None = None, seed: int = 0, **options: Any) -> list[Sample]:
        """Samples of this task from the files in ``data_dir``.

        ``n``: at most this many samples (``None``: all); they are the first ``n`` of a
        permutation of the eligible items drawn with ``random.Random(seed)``, so a smaller
        ``n`` gives a prefix of a larger one. ``options``: the task's options (see
        :attr:`options` and the subclass docstring). Raises :class:`TaskError` for a bad
        ``n``, ``seed`` or option and :class:`DataError` for missing or malformed data.
        """
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise TaskError(f"{self.name}: n must be a non-negative integer or None, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TaskError(f"{self.name}: seed must be an integer, got {seed!r}")
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise TaskError(f"{self.name}: unknown option {unknown[0]!r} (options: {known})")
        merged = {**self.options, **options}
        return self._load(Path(data_dir), n=n, seed=seed, **merged)

    @abc.abstractmethod
    def _load(self, data_dir: Path, *, n: int | None, seed: int, **options: Any) -> list[Sample]:
        """Load with validated ``n`` and ``seed`` and every option present."""

    @abc.abstractmethod
    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        """Metric name → value in ``[0, 1]`` for one prediction (a generated reply, or a
        choice letter), with the keys of :attr:`metrics` in that order."""

    def __repr__(self) -> str:
        return f"<task {self.name} ({self.kind})>"


#: Registered tasks: name → instance. Filled by :func:`register` when
#: :mod:`kvcodec.tasks` is imported.
TASKS: dict[str, Task] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: add an instance of ``cls`` to :data:`TASKS` under ``cls.name``."""
    if cls.name in TASKS:
        raise TaskError(f"two tasks are named {cls.name!r}")
    TASKS[cls.name] = cls()
    return cls


def get_task(name: str) -> Task:
    """The registered task called ``name``; :class:`UnknownTaskError` (a ``ValueError``)
    naming the known tasks otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise UnknownTaskError(f"unknown task {name!r} (known: {', '.join(sorted(TASKS))})") from None


def canonical_task_options(task: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """:meth:`Task.canonical_options` of the registered task called ``task``; for a task
    not registered here (e.g. records written by a plugin that is not installed), ``options``
    as given."""
    found = TASKS.get(task) if isinstance(task, str) else None
    if found is None:
        return dict(options or {})
    return found.canonical_options(options)


def resolve_data_dir(cli_value: str | os.PathLike | None) -> Path:
    """The data folder: ``cli_value`` if given (not ``None``/empty), else the environment
    variable ``KVCODEC_DATA_DIR`` if set and non-empty. Raises :class:`DataError` if
    neither is set — the one-line message lists every data set with its expected file
    names and download address — or if the folder does not exist."""
    if cli_value is not None and str(cli_value) != "":
        path, origin = Path(cli_value), "data directory"
    elif os.environ.get(DATA_DIR_ENV):
        path, origin = Path(os.environ[DATA_DIR_ENV]), f"{DATA_DIR_ENV}"
    else:
        seen: dict[str, DataSource] = {}
        for task in TASKS.values():
            for src in task.sources:
                seen.setdefault(src.files[0], src)
        listing = "; ".join(src.describe() for src in seen.values())
        raise DataError(
            f"no data directory: pass one (--data-dir) or set {DATA_DIR_ENV} to a folder holding {listing}"
        )
    path = path.expanduser()
    if not path.is_dir():
        raise DataError(f"{origin} {str(path)!r} is not an existing folder")
    return path


def select(items: Sequence[T], n: int | None, seed: int) -> list[T]:
    """The first ``n`` (all if ``None``) items of a permutation of ``items`` drawn with
    ``random.Random(seed).shuffle`` (stable across Python versions and processes)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    if n is not None:
        order = order[:n]
    return [items[i] for i in order]
