"""Checks ``truncation`` and ``corruption``: damaged payloads raise ``DecodeError``, promptly."""

from __future__ import annotations

import random
import struct
import zlib

from kvcodec import wire
from kvcodec.cache import KVCache
from kvcodec.errors import DecodeError

from ..subject import Subject
from ..timeouts import TimeLimitExceeded
from ._common import _encode, _fail


def check_truncation(subject: Subject, cache: KVCache, max_prefixes: int = 1500, seed: int = 0) -> int:
    """Every proper prefix of the payload (all of them up to ``max_prefixes``, else the
    first and last 256 and a random sample), and the payload with one byte appended,
    raise ``DecodeError`` — nothing else, and within the time limit. Returns how many
    were tried."""
    c = "truncation"
    data = _encode(subject, cache)
    n = len(data)
    if n <= max_prefixes:
        lengths = list(range(n))
    else:
        rng = random.Random(seed)
        lengths = sorted(set(range(256)) | set(range(n - 256, n)) | set(rng.sample(range(n), max_prefixes - 512)))
    candidates = [(f"truncated to {k} of {n} bytes", data[:k]) for k in lengths]
    candidates.append((f"{n} bytes plus one", data + b"\x00"))
    for label, bad in candidates:
        _expect_decode_error(c, subject, bad, label, allow_success=False)
    return len(candidates)


def _expect_decode_error(c: str, subject: Subject, data: bytes, label: str, allow_success: bool) -> None:
    try:
        out = subject.decode(data)
    except DecodeError:
        return
    except TimeLimitExceeded as exc:
        raise _fail(c, subject, f"payload {label}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the finding
        raise _fail(c, subject, f"payload {label}: kvcodec.decode raised {type(exc).__name__}: {exc}, not DecodeError") from None
    if not allow_success:
        raise _fail(c, subject, f"payload {label} decoded without an error")
    if not isinstance(out, KVCache):
        raise _fail(c, subject, f"payload {label}: decode returned {type(out).__name__}")


def split_payload(data: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """(preamble, header, [section bodies]) of a well-formed payload, by its length fields
    (``specs/wire-format.md``).

    Raises:
        ValueError: the length fields do not add up to ``len(data)``.
    """
    header_len = struct.unpack_from("<I", data, 8)[0]
    pre, header = data[:wire.PREAMBLE.size], data[wire.PREAMBLE.size : wire.PREAMBLE.size + header_len]
    pos, bodies = wire.PREAMBLE.size + header_len + 4, []
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        bodies.append(data[pos + 4 : pos + 4 + length])
        pos += 8 + length
    if pos != len(data):
        raise ValueError(f"length fields add up to {pos} bytes, the payload has {len(data)}")
    return pre, header, bodies


def join_payload(pre: bytes, header: bytes, bodies: list[bytes]) -> bytes:
    """Reassemble a payload from :func:`split_payload`'s parts with correct lengths and
    CRC-32s (``zlib.crc32``)."""
    pre = pre[:8] + struct.pack("<I", len(header))
    out = bytearray(pre + header + struct.pack("<I", zlib.crc32(pre + header)))
    for body in bodies:
        length = struct.pack("<I", len(body))
        out += length + body + struct.pack("<I", zlib.crc32(length + body))
    return bytes(out)


def strict_decode(subject: Subject, data: bytes, label: str, check: str = "corruption") -> None:
    """Decode ``data`` the way ``kvcodec.decode`` does, but call each stage's ``decode``
    directly: kvcodec wraps a stray exception from a stage in a ``DecodeError`` as a last
    resort, and a stage MUST NOT rely on that. A ``DecodeError`` anywhere ends quietly;
    any other exception is a violation naming the stage."""
    try:
        payload = subject.timed(lambda: wire.load(data, subject.registry), f"parsing a payload {label}")
    except DecodeError:
        return
    except TimeLimitExceeded as exc:
        raise _fail(check, subject, str(exc)) from None
    for i, layer in enumerate(payload.layers):
        for what, block in (("keys", layer.keys), ("values", layer.values)):
            chain = payload.chains[block.chain]
            y = block.data
            for stage, side in zip(reversed(chain.stages), reversed(block.sides)):
                try:
                    y = subject.timed(lambda: stage.decode(y, side), f"{stage}.decode of a payload {label}")
                except DecodeError:
                    return
                except TimeLimitExceeded as exc:
                    raise _fail(check, subject, str(exc)) from None
                except Exception as exc:  # noqa: BLE001 - the finding
                    raise _fail(
                        check,
                        subject,
                        f"payload {label}: {stage}.decode of layer {i} {what} raised {type(exc).__name__}: {exc};"
                        " a stage must raise DecodeError",
                    ) from None


def check_corruption(subject: Subject, cache: KVCache, flips: int = 120, seed: int = 0) -> None:
    """Damaged payloads raise ``DecodeError``, promptly:

    - ``flips`` payloads with one random byte changed: the checksums catch every one;
    - ``flips`` payloads with 1–3 bytes of the header or of a layer section changed and
      the checksums recomputed, so the damage reaches the codecs: ``kvcodec.decode``
      raises ``DecodeError`` or returns a cache, and each stage's own ``decode`` raises
      ``DecodeError`` or returns (see :func:`strict_decode`).
    """
    c = "corruption"
    data = _encode(subject, cache)
    rng = random.Random(seed)
    for _ in range(flips):
        pos = rng.randrange(len(data))
        bad = bytearray(data)
        bad[pos] ^= rng.randrange(1, 256)
        _expect_decode_error(c, subject, bytes(bad), f"with byte {pos} changed", allow_success=False)
    pre, header, bodies = split_payload(data)
    parts = [header] + bodies
    for _ in range(flips):
        which = rng.randrange(len(parts))
        part = bytearray(parts[which])
        if not part:
            continue
        changed = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            pos = rng.randrange(len(part))
            part[pos] ^= rng.choice((1, 2, 4, 8, 16, 32, 64, 128, rng.randrange(1, 256)))
            changed.append(pos)
        new = list(parts)
        new[which] = bytes(part)
        bad = join_payload(pre, new[0], new[1:])
        label = f"with {'header' if which == 0 else f'layer {which - 1} section'} bytes {changed} changed (checksums fixed)"
        strict_decode(subject, bad, label, c)
        _expect_decode_error(c, subject, bad, label, allow_success=True)
