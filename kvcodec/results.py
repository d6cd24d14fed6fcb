"""Per-sample evaluation records: a JSON-lines results file that runs append to and resume from.

One line per (model, task, sample, pipeline); a file named ``*.jsonl.gz`` is gzip-compressed. The full-precision baseline of a sample is
the record whose pipeline is ``"full"``. A record's :func:`record_key` identifies it; a
rerun skips every key already in the file. Records are plain JSON — never pickle.
"""

from __future__ import annotations

import gzip
import json
import platform
import re
import subprocess
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

from kvcodec.errors import KVCodecError

FULL = "full"


class ResultsError(KVCodecError, ValueError):
    """A results file cannot be read (one-line message naming the file and line)."""


def options_key(record: dict[str, Any]) -> str:
    """The record's task options as JSON, canonical (:func:`kvcodec.tasks.canonical_task_options`:
    defaults filled in), so ``{}`` and ``{"length": 1024}`` name the same needle run."""
    from kvcodec.tasks import canonical_task_options

    return json.dumps(canonical_task_options(record["task"], record.get("task_options") or {}), sort_keys=True)


def record_key(record: dict[str, Any]) -> tuple:
    """What makes two records the same measurement: model file, dtype, task and its
    options (canonical: :func:`options_key`), sample, pipeline, and generation length."""
    return (
        record["model_sha256"],
        record["dtype"],
        record["task"],
        options_key(record),
        record["sample_id"],
        record["pipeline"],
        record.get("max_new_tokens"),
    )


def _open(path: Path, mode: str):
    """Open a results file as text; a ``.gz`` name means gzip (appends add a gzip member)."""
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return path.open(mode, encoding="utf-8")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of one results file, every way of being unreadable turned
    into a one-line :class:`ResultsError`."""
    if path.is_dir():
        raise ResultsError(f"{path}: is a folder, not a results file")
    number = 0
    try:
        with _open(path, "r") as fh:
            for number, line in enumerate(fh, 1):
                yield number, line
    except EOFError:
        raise ResultsError(
            f"{path}: the gzip data ends early after line {number} (a run killed while writing?); "
            f"`gzip -dc {path} > {path.with_suffix('')}` keeps its complete lines — resume from that file"
        ) from None
    except gzip.BadGzipFile as exc:
        raise ResultsError(f"{path}: bad gzip data after line {number} ({exc}; a results file named *.gz "
                           "must be gzip-compressed)") from None
    except zlib.error as exc:
        raise ResultsError(f"{path}: corrupt gzip data after line {number} ({exc})") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not UTF-8 text after line {number}") from None
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read ({exc.strerror or exc})") from None


_REQUIRED = ("model", "model_sha256", "dtype", "task", "sample_id", "pipeline", "score")


def _records_of(path: Path, partial_tail: bool = False) -> Iterator[tuple[dict[str, Any], bool]]:
    """``(record, whether its line ends in a newline)`` for every record of one file."""
    for number, line in _lines(path):
        if not line.strip() or (partial_tail and not line.endswith("\n")):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = "" if line.endswith("\n") else " — the last line is incomplete (a run killed mid-line?); delete it to resume"
            raise ResultsError(f"{path}:{number}: not JSON ({exc.msg}){hint}") from None
        if not isinstance(record, dict) or any(k not in record for k in _REQUIRED):
            raise ResultsError(f"{path}:{number}: a record needs the fields {', '.join(_REQUIRED)}")
        if not isinstance(record.get("task_options") or {}, dict):
            raise ResultsError(f"{path}:{number}: task_options must be a JSON object")
        yield record, line.endswith("\n")


def read_records(paths: Iterable[str | Path], *, partial_tail: bool = False) -> Iterator[dict[str, Any]]:
    """Every record of every file, in order; a missing file yields nothing. With
    ``partial_tail``, a last line without its newline (a writer killed mid-line) is skipped.

    Raises:
        ResultsError: for a line that is not a JSON object with the required fields, and
            for a file that cannot be read (a folder, truncated or bad gzip data, not UTF-8).
    """
    for path in paths:
        path = Path(path)
        if path.exists():
            yield from (record for record, _ in _records_of(path, partial_tail))


class ResultsFile:
    """An append-only JSON-lines file of records, with the keys it already holds.

    Raises:
        ResultsError: as :func:`read_records`, when the file exists but cannot be read.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self._open_tail = False  # the last record's line has no newline: an append starts a new line
        for record, closed in _records_of(self.path) if self.path.exists() else ():
            self.records.append(record)
            self._open_tail = not closed
        self.keys = {record_key(r): r for r in self.records}

    def get(self, key: tuple) -> dict[str, Any] | None:
        return self.keys.get(key)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records (one JSON object per line) and flush, so an interrupted run keeps them."""
        records = list(records)
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _open(self.path, "a") as fh:
            if self._open_tail:  # the file's last record has no newline: start a new line
                fh.write("\n")
                self._open_tail = False
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
                self.keys[record_key(r)] = r
                self.records.append(r)


def provenance(lm, seed: int) -> dict[str, Any]:
    """Where a record comes from: kvcodec version and commit, model file hash, device,
    dtype, torch and transformers versions, seed."""
    import torch
    import transformers

    import kvcodec

    device = str(lm.device)
    if lm.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(lm.device)})"
    else:
        device += f" ({platform.processor() or platform.machine()})"
    return {
        "kvcodec": kvcodec.__version__,
        "commit": _commit(),
        "model_sha256": lm.sha256,
        "device": device,
        "dtype": str(lm.dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "seed": seed,
    }


def _commit(here: Path | None = None) -> str:
    """The git commit of the kvcodec source in use: ``<12 hex>`` (``-dirty`` with uncommitted
    changes to tracked files) from ``git rev-parse``; outside a checkout, the commit that
    ``git archive`` wrote into ``kvcodec/data/archive_commit.txt`` (``export-subst`` in
    ``.gitattributes``) as ``<12 hex>-archive``; else ``"unknown"``."""
    here = Path(__file__).resolve().parent if here is None else here
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        out = dirty = None
    if out is not None and out.returncode == 0:
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    try:
        archived = (here / "data" / "archive_commit.txt").read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"
    if re.fullmatch(r"[0-9a-f]{40}", archived):
        return archived[:12] + "-archive"
    return "unknown"  # the unsubstituted placeholder: a copy of a checkout, not an archive
