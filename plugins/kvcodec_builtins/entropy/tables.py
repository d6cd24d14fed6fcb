"""Frequency tables for the ANS stage (``specs/entropy-coding.md`` §3).

A *context* splits the codes of one ``[B, H, T, D]`` tensor into K symbol streams, each
coded with its own table:

=========  ======  ===========================================================
context    K       stream k holds, in this order
=========  ======  ===========================================================
tensor     1       every code, in C order (any rank)
head       H       ``codes[b, k, t, d]`` for all b, t, d, in C order
channel    H·D     ``codes[b, h, t, d]`` with ``k = h·D + d``, for all b, t, in C order
=========  ======  ===========================================================

A table is the alphabet range ``[lo, lo + m)`` that its stream uses and one frequency per
symbol in it, quantized so that the total stays near ``2**precision`` (§3.2) and written
as LEB128 varints (§3.3).
"""

from __future__ import annotations

import numpy as np

from kvcodec.errors import DecodeError

CONTEXTS = ("head", "channel", "tensor")
#: longest varint a table may hold: 5 bytes carry 35 bits, above any lo, m or frequency
MAX_VARINT_BYTES = 5


def table_count(context: str, shape: tuple[int, ...]) -> int:
    """K, the number of symbol streams (and tables) of codes of ``shape``."""
    if context == "tensor":
        return 1
    return shape[1] * (shape[3] if context == "channel" else 1)


def split(values: np.ndarray, context: str) -> np.ndarray:
    """Codes of any shape (``[B,H,T,D]`` unless ``context`` is ``tensor``) → ``[K, n]``
    int64, row k holding stream k in coding order."""
    v = values.astype(np.int64, copy=False)
    if context == "tensor":
        return v.reshape(1, -1)
    b, h, t, d = v.shape
    if context == "head":
        return np.ascontiguousarray(v.transpose(1, 0, 2, 3)).reshape(h, b * t * d)
    return np.ascontiguousarray(v.transpose(1, 3, 0, 2)).reshape(h * d, b * t)


def merge(streams: np.ndarray, context: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`split`: ``[K, n]`` → codes of ``shape``."""
    if context == "tensor":
        return streams.reshape(shape)
    b, h, t, d = shape
    if context == "head":
        return streams.reshape(h, b, t, d).transpose(1, 0, 2, 3)
    return streams.reshape(h, d, b, t).transpose(2, 0, 3, 1)


def quantize_counts(counts: np.ndarray, precision: int) -> np.ndarray:
    """Frequencies sent for one table (§3.2), int64.

    With ``N = Σ counts``: the counts themselves when ``N ≤ 2**precision``; otherwise
    ``max(1, floor(c · 2**precision / N))`` for every ``c > 0`` and 0 where ``c = 0``.
    Exact integer arithmetic, so any implementation gets the same numbers.
    """
    n = int(counts.sum())
    if n <= 1 << precision:
        return counts.astype(np.int64)
    f = (counts.astype(np.int64) << precision) // n
    f[(counts > 0) & (f == 0)] = 1
    return f


def frequencies_ok(f: np.ndarray, n: int, precision: int) -> bool:
    """Whether decoded frequencies ``f`` (int64, length m ≥ 1) could have been produced by
    :func:`quantize_counts` for a stream of ``n`` symbols (§3.4)."""
    total = int(f.sum())
    if f[0] < 1 or f[-1] < 1:
        return False
    if n <= 1 << precision:
        return total == n
    return bool((f <= 1 << precision).all()) and total <= (1 << precision) + len(f)


# ----------------------------------------------------------------------------- varints
def varint_encode(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of each value (0 ≤ v < 2**35), concatenated: 7 bits per byte, least
    significant group first, high bit set on every byte but a value's last."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    if v.size == 0:
        return b""
    lengths = np.ones(v.size, dtype=np.int64)
    for k in range(1, MAX_VARINT_BYTES):
        lengths += v >= np.uint64(1 << (7 * k))
    if bool((v >= np.uint64(1 << (7 * MAX_VARINT_BYTES))).any()):
        raise ValueError(f"a table value needs more than {MAX_VARINT_BYTES} varint bytes")
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), dtype=np.uint8)
    for k in range(int(lengths.max())):
        sel = lengths > k
        group = (v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (lengths[sel] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + k] = (group | more).astype(np.uint8)
    return out.tobytes()


def varint_decode(buf: memoryview | bytes, stage: str) -> np.ndarray:
    """Every varint of ``buf`` (which must end with a complete one), as int64.

    Raises:
        DecodeError: for a truncated last varint, one longer than 5 bytes, or one that is
            not minimal (a last byte of 0 after other bytes).
    """
    b = np.frombuffer(buf, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    if b[-1] & 0x80:
        raise DecodeError(f"{stage}: truncated varint at the end of the tables")
    ends = np.flatnonzero(b < 0x80)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if int(lengths.max()) > MAX_VARINT_BYTES:
        raise DecodeError(f"{stage}: a table varint is longer than {MAX_VARINT_BYTES} bytes")
    if bool(((lengths > 1) & (b[ends] == 0)).any()):
        raise DecodeError(f"{stage}: a table varint is not minimal (ends in a zero byte)")
    values = np.zeros(ends.size, dtype=np.int64)
    for k in range(int(lengths.max())):
        sel = lengths > k
        values[sel] |= (b[starts[sel] + k].astype(np.int64) & 0x7F) << (7 * k)
    return values
