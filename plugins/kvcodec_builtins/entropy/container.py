"""The byte container shared by the entropy stages (``specs/entropy-coding.md`` §2).

Every entropy-coded tensor is one self-describing byte string::

    stream = bits u8 · ndim u8 · dim u32{ndim} · mode u8 · body
    mode 0 (raw):   body = the codes bit-packed as in wire-format.md §5
    mode 1 (coded): body = the coder's own layout (ans: tables + words; zstd: one frame)

The geometry fields are those of the wire format's CODES data, so a coded tensor is never
more than one byte (the mode) longer than the same codes sent bit-packed: a writer sends
mode 0 whenever the coded body is not shorter than the packed codes.
"""

from __future__ import annotations

import math
import struct

import attrs
import numpy as np
import torch

from kvcodec import bitpack
from kvcodec.codec import Codes
from kvcodec.errors import CodecError, DecodeError

RAW, CODED = 0, 1
MAX_NDIM = 8
MAX_DIM = 1 << 31
#: most codes one stream may declare: the decoder allocates them before it can check the
#: coded body (an ANS stream of a constant table is empty whatever the count)
MAX_CODES = 1 << 30


def check_codes(x, stage: str) -> Codes:
    """Validate an encoder's input: :class:`Codes` whose values lie in ``[0, 2**bits)``.

    Raises:
        CodecError: naming ``stage``, for anything else.
    """
    if not isinstance(x, Codes):
        raise CodecError(f"{stage}: expected integer codes, got {type(x).__name__}")
    data = x.data
    if data.is_floating_point() or data.is_complex() or data.dtype == torch.bool:
        raise CodecError(f"{stage}: codes must be an integer tensor, got {data.dtype}")
    if data.dim() > MAX_NDIM or any(d > MAX_DIM for d in data.shape) or data.numel() > MAX_CODES:
        raise CodecError(f"{stage}: codes of shape {tuple(data.shape)} exceed the stream limits (§2)")
    if data.numel() and (int(data.min()) < 0 or int(data.max()) >= 1 << x.bits):
        raise CodecError(f"{stage}: codes outside 0..{(1 << x.bits) - 1} for {x.bits} bits")
    return x


def geometry(bits: int, shape: tuple[int, ...]) -> bytes:
    """``bits u8 · ndim u8 · dim u32{ndim}``: the fields that open every stream."""
    return struct.pack(f"<BB{len(shape)}I", bits, len(shape), *shape)


def assemble(codes: Codes, packed: bytes, coded: bytes | None) -> bytes:
    """The whole stream: geometry, then mode 1 with ``coded`` if it is shorter than the
    packed codes, else mode 0 with ``packed`` (so ties and ``coded=None`` send raw)."""
    head = geometry(codes.bits, tuple(codes.data.shape))
    if coded is not None and len(coded) < len(packed):
        return head + bytes([CODED]) + coded
    return head + bytes([RAW]) + packed


@attrs.frozen
class Stream:
    """A parsed stream header: code width, shape, element count, mode and the body."""

    bits: int
    shape: tuple[int, ...]
    count: int
    mode: int
    body: memoryview

    @property
    def packed_size(self) -> int:
        """Bytes the codes occupy bit-packed, ``ceil(count · bits / 8)``."""
        return bitpack.packed_size(self.count, self.bits)

    def raw(self, stage: str) -> Codes:
        """Unpack a mode-0 body (exactly :attr:`packed_size` bytes, unused bits zero).

        Raises:
            DecodeError: if the body has another length or nonzero padding bits.
        """
        try:
            data = bitpack.unpack(self.body, self.count, self.bits)
        except DecodeError as exc:
            raise DecodeError(f"{stage}: raw body: {exc}") from None
        return Codes(data.reshape(self.shape), self.bits)


def parse(y, stage: str, ndims: tuple[int, ...] | None = None) -> Stream:
    """Parse the geometry and mode of an untrusted stream.

    ``ndims``: the ranks this stage accepts (``None``: any rank 0–8).

    Raises:
        DecodeError: if ``y`` is not bytes, is truncated, or declares a width outside
            1–16, a rank, dimension or count beyond the limits, or an unknown mode.
    """
    if not isinstance(y, (bytes, bytearray, memoryview)):
        raise DecodeError(f"{stage}: expected bytes, got {type(y).__name__}")
    buf = memoryview(y).cast("B")
    if len(buf) < 2:
        raise DecodeError(f"{stage}: truncated: {len(buf)} bytes cannot hold the stream header")
    bits, ndim = buf[0], buf[1]
    if not 1 <= bits <= 16:
        raise DecodeError(f"{stage}: code width {bits} is outside 1..16")
    if ndim > MAX_NDIM or (ndims is not None and ndim not in ndims):
        allowed = "0..8" if ndims is None else " or ".join(map(str, ndims))
        raise DecodeError(f"{stage}: codes of rank {ndim}; this stage takes rank {allowed}")
    end = 2 + 4 * ndim
    if len(buf) < end + 1:
        raise DecodeError(f"{stage}: truncated: the stream header needs {end + 1} bytes, got {len(buf)}")
    shape = struct.unpack_from(f"<{ndim}I", buf, 2)
    if any(d > MAX_DIM for d in shape) or math.prod(max(d, 1) for d in shape) > MAX_CODES:
        raise DecodeError(f"{stage}: codes of shape {shape} exceed {MAX_CODES} codes")
    mode = buf[end]
    if mode not in (RAW, CODED):
        raise DecodeError(f"{stage}: unknown stream mode {mode} (0 raw, 1 coded)")
    return Stream(bits, tuple(shape), math.prod(shape), mode, buf[end + 1 :])


def storage(values: np.ndarray, bits: int, shape: tuple[int, ...]) -> Codes:
    """Codes of ``shape`` in the storage dtype for ``bits`` (uint8 up to 8 bits, int32 above)."""
    dtype = np.uint8 if bits <= 8 else np.int32
    return Codes(torch.from_numpy(np.ascontiguousarray(values, dtype=dtype).reshape(shape)), bits)
