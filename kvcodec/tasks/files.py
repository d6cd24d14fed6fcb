"""Reading data files with one-line errors that name the file.

Every reader raises :class:`~kvcodec.tasks.base.DataError` (never ``OSError``,
``json.JSONDecodeError`` or ``UnicodeDecodeError``) for a file that is missing, is not
UTF-8 text, or does not parse; the message starts with the file's path. Record-level
checks use :func:`need`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from kvcodec.tasks.base import DataError, DataSource

__all__ = ["find_source", "need", "read_csv", "read_json", "read_jsonl", "read_text"]


def find_source(data_dir: Path, source: DataSource) -> Path:
    """The first of ``source.files`` that exists under ``data_dir``; :class:`DataError`
    naming the expected file and where to get it otherwise."""
    for rel in source.files:
        path = data_dir / rel
        if path.is_file():
            return path
    also = f" (nor {', '.join(source.files[1:])})" if len(source.files) > 1 else ""
    raise DataError(f"{data_dir / source.files[0]}: no such file{also}; get {source.name} from {source.url}")


def read_text(path: Path) -> str:
    """The file's text (UTF-8, a leading byte-order mark dropped)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _json_error(path: Path, exc: json.JSONDecodeError) -> DataError:
    return DataError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})")


def read_json(path: Path, text: str | None = None) -> Any:
    """The parsed JSON document of ``path`` (or of ``text``, already read from it)."""
    try:
        return json.loads(read_text(path) if text is None else text)
    except json.JSONDecodeError as exc:
        raise _json_error(path, exc) from None


def read_jsonl(path: Path, text: str | None = None) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file (or of ``text``, already read from it), in order.

    Objects are read one after another with white space (normally one newline) between
    them, and raw control characters are accepted inside strings (``json``'s
    ``strict=False``). So a record whose string holds a literal line break — which splits
    it over two physical lines, as one record of the shared TriviaQA copy does — is still
    read as one record. Every value must be a JSON object.
    """
    if text is None:
        text = read_text(path)
    decoder = json.JSONDecoder(strict=False)
    out: list[dict[str, Any]] = []
    pos, end, line, counted = 0, len(text), 1, 0
    while True:
        while pos < end and text[pos] in " \t\r\n":
            pos += 1
        if pos >= end:
            return out
        line += text.count("\n", counted, pos)  # line where this record starts
        counted = pos
        record = f"record {len(out) + 1} (line {line})"
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}"
            raise DataError(f"{path}: {record} is not valid JSON: {exc.msg} at {where}") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: {record} is a JSON {type(obj).__name__}, not an object")
        out.append(obj)


def read_csv(path: Path) -> list[list[str]]:
    """The rows of a CSV file (Python's ``csv`` module, default ``excel`` dialect: quoted
    fields may hold commas, quotes and line breaks)."""
    try:
        return list(csv.reader(io.StringIO(read_text(path), newline="")))
    except csv.Error as exc:
        raise DataError(f"{path}: not valid CSV ({exc})") from None


def need(record: Any, key: str, kind: type | tuple[type, ...], path: Path, where: str) -> Any:
    """``record[key]``, checked to be an instance of ``kind``; a one-line
    :class:`DataError` ``"{path}: {where}: …"`` otherwise."""
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where} is not a JSON object")
    if key not in record:
        raise DataError(f"{path}: {where} has no {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{path}: {where}: {key!r} is not a {names}")
    return value
