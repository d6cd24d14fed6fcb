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
from pathlib import Path
from typing import Any, Iterable, Iterator

from kvcodec.errors import KVCodecError

FULL = "full"


class ResultsError(KVCodecError, ValueError):
    """A results file cannot be read (one-line message naming the file and line)."""


def record_key(record: dict[str, Any]) -> tuple:
    """What makes two records the same measurement: model file, dtype, task and its
    options, sample, pipeline, and generation length."""
    return (
        record["model_sha256"],
        record["dtype"],
        record["task"],
        json.dumps(record.get("task_options", {}), sort_keys=True),
        record["sample_id"],
        record["pipeline"],
        record.get("max_new_tokens"),
    )


def _open(path: Path, mode: str):
    """Open a results file as text; a ``.gz`` name means gzip (appends add a gzip member)."""
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return path.open(mode, encoding="utf-8")


def read_records(paths: Iterable[str | Path], *, partial_tail: bool = False) -> Iterator[dict[str, Any]]:
    """Every record of every file, in order; a missing file yields nothing. With
    ``partial_tail``, a last line without its newline (a writer killed mid-line) is skipped.

    Raises:
        ResultsError: for a line that is not a JSON object with the required fields.
    """
    required = ("model", "model_sha256", "dtype", "task", "sample_id", "pipeline", "score")
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        with _open(path, "r") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip() or (partial_tail and not line.endswith("\n")):
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ResultsError(f"{path}:{number}: not JSON ({exc.msg})") from None
                if not isinstance(record, dict) or any(k not in record for k in required):
                    raise ResultsError(f"{path}:{number}: a record needs the fields {', '.join(required)}")
                yield record


class ResultsFile:
    """An append-only JSON-lines file of records, with the keys it already holds."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records = list(read_records([self.path]))
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
