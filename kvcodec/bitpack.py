"""Dense bit packing of integer codes (``specs/wire-format.md`` §5).

``n`` codes of ``b`` bits occupy ``ceil(n·b / 8)`` bytes. Code ``i`` holds bits
``i·b … i·b + b − 1`` of the stream, least significant bit first; stream bit ``j`` is bit
``j mod 8`` (LSB = 0) of byte ``j div 8``. Unused bits of the last byte are zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kvcodec.errors import DecodeError

__all__ = ["packed_size", "pack", "unpack"]


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits occupy: ``ceil(count · bits / 8)``."""
    return (count * bits + 7) // 8


def pack(codes: torch.Tensor, bits: int) -> bytes:
    """Pack non-negative integer codes (< 2**bits, any shape, C order) into bytes.

    Raises:
        ValueError: if ``bits`` is not 1–16.
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be 1..16, got {bits}")
    c = codes.reshape(-1).cpu().numpy()
    n = c.size
    if bits == 8:
        return c.astype(np.uint8).tobytes()
    if bits == 16:
        return c.astype("<u2").tobytes()
    if bits > 8:
        return _pack_bitwise(c, bits)
    groups = math.ceil(n / 8)
    padded = np.zeros(groups * 8, dtype=np.uint64)
    padded[:n] = c
    words = np.zeros(groups, dtype=np.uint64)
    for j in range(8):  # OR the 8 codes of each group into one 64-bit word
        words |= padded[j::8] << np.uint64(j * bits)
    out = words.astype("<u8").view(np.uint8).reshape(groups, 8)[:, :bits].reshape(-1)
    return out[: packed_size(n, bits)].tobytes()


def _pack_bitwise(c: np.ndarray, bits: int) -> bytes:
    """Reference packer for any width (slow, memory-hungry): used for 9–15 bits and tests."""
    as_bytes = c.astype("<u2").view(np.uint8).reshape(-1, 2)
    stream = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :bits].reshape(-1)
    return np.packbits(stream, bitorder="little").tobytes()


def unpack(data: bytes | memoryview, count: int, bits: int) -> torch.Tensor:
    """Unpack ``count`` codes of ``bits`` bits from exactly ``packed_size(count, bits)`` bytes.

    Returns a flat tensor, uint8 for ``bits ≤ 8`` and int32 above.

    Raises:
        DecodeError: if the length is wrong or the unused bits of the last byte are not zero.
    """
    if not 1 <= bits <= 16:
        raise DecodeError(f"code width {bits} bits is outside 1..16")
    need = packed_size(count, bits)
    if len(data) != need:
        raise DecodeError(f"packed codes: expected {need} bytes for {count} {bits}-bit codes, got {len(data)}")
    raw = np.frombuffer(data, dtype=np.uint8)
    used = (count * bits) % 8
    if used and raw.size and raw[-1] >> used:
        raise DecodeError("packed codes: unused bits of the last byte are not zero")
    if bits == 8:
        return torch.from_numpy(raw.copy())
    if bits == 16:
        return torch.from_numpy(raw.view("<u2").astype(np.int32))
    if bits > 8:
        stream = np.unpackbits(raw, bitorder="little")[: count * bits].reshape(count, bits)
        vals = np.packbits(stream, axis=1, bitorder="little")
        vals = np.pad(vals, ((0, 0), (0, 2 - vals.shape[1]))).view("<u2").reshape(-1)
        return torch.from_numpy(vals.astype(np.int32))
    groups = math.ceil(count / 8)
    block = np.zeros((groups, 8), dtype=np.uint8)
    flat = np.zeros(groups * bits, dtype=np.uint8)
    flat[: raw.size] = raw
    block[:, :bits] = flat.reshape(groups, bits)
    words = block.view("<u8").reshape(groups)
    mask = np.uint64((1 << bits) - 1)
    vals = np.empty((groups, 8), dtype=np.uint8)
    for j in range(8):
        vals[:, j] = (words >> np.uint64(j * bits)) & mask
    return torch.from_numpy(vals.reshape(-1)[:count].copy())
