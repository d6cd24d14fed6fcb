"""Evaluation tasks: real data sets turned into samples for the KV-cache protocol.

The sender prefills ``sample.context`` and transmits its KV cache; the receiver appends
``sample.question`` and decodes greedily (``kind == "generate"``) or appends
``task.answer_cue`` and reads the choice letters' logits (``kind == "choice"``); the
reply is scored with ``task.score(prediction, sample)``.

>>> from kvcodec.tasks import get_task, resolve_data_dir
>>> task = get_task("squad")
>>> samples = task.load(resolve_data_dir(None), n=100, seed=0)   # KVCODEC_DATA_DIR
>>> task.score("Denver Broncos", samples[0])                     # {"f1": …, "em": …}

Tasks (:data:`TASKS`): ``squad``, ``hotpotqa``, ``triviaqa``, ``mmlu``, ``needle``. Data
handling, templates and metrics: ``specs/tasks.md``.
"""

from kvcodec.tasks import base
from kvcodec.tasks.base import (
    DATA_DIR_ENV,
    TASKS,
    DataError,
    DataSource,
    Sample,
    Task,
    TaskError,
    UnknownTaskError,
    canonical_task_options,
    get_task,
    register,
    resolve_data_dir,
)

# Importing a task module registers its task in TASKS.
from kvcodec.tasks import squad, hotpotqa, triviaqa, mmlu, needle  # noqa: E402,F401  isort: skip

__all__ = [name for name in base.__all__ if name != "select"]
