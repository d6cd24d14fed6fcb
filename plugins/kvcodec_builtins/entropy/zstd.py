"""Zstandard over the bit-packed codes: a general-purpose compressor as a baseline.

Zstandard (Collet & Kucherawy, RFC 8878, "Zstandard Compression and the
'application/zstd' Media Type", 2021) through the ``zstandard`` bindings. It sees the
same bytes the wire format would send for the codes (``specs/wire-format.md`` §5), so the
gain over plain bit packing is what a general-purpose compressor finds in them; compare
with the ``ans`` stage, which models the code distribution directly. Layout in
``specs/entropy-coding.md`` §5.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import torch
import zstandard

from kvcodec import bitpack
from kvcodec.codec import Codes, Form, TensorStage
from kvcodec.errors import DecodeError

from . import container


@attrs.frozen
class Zstd(TensorStage):
    """Lossless CODES → BYTES stage: the bit-packed codes compressed into one zstd frame.

    Parameters:
        level: zstd compression level, 1–22 (default 3, zstd's own default; above 19 the
            window grows to 2**27 bytes and the decoder needs as much memory).

    encode: :class:`Codes` of 1–16 bits, any shape of at most 2**30 codes → ``bytes``: the
    stream of ``specs/entropy-coding.md`` §2 with one zstd frame (content size written,
    no checksum) as the mode-1 body, or the packed codes (mode 0) when the frame is not
    shorter; no side information.
    decode: → the identical :class:`Codes` (uint8 up to 8 bits, int32 above).

    Raises:
        CodecError: on encode, for input that is not codes within ``[0, 2**bits)``.
        DecodeError: on decode, for a truncated or damaged stream, a frame without a
            content size or with one other than the packed size, or bytes after the frame.
    """

    name = "zstd"
    family = "entropy"
    accepts = Form.CODES
    produces = Form.BYTES
    lossless = True

    level: int = attrs.field(default=3, validator=[attrs.validators.ge(1), attrs.validators.le(22)])

    def encode(self, x: Codes) -> tuple[bytes, dict[str, torch.Tensor]]:
        x = container.check_codes(x, str(self))
        packed = bitpack.pack(x.data, x.bits)
        compressor = zstandard.ZstdCompressor(level=self.level, write_content_size=True, write_checksum=False)
        frame = compressor.compress(packed)
        return container.assemble(x, packed, frame), {}

    def decode(self, y: bytes, side: Mapping[str, torch.Tensor]) -> Codes:
        where = str(self)
        s = container.parse(y, where)
        if s.mode == container.RAW:
            return s.raw(where)
        frame = bytes(s.body)
        need = s.packed_size
        try:
            size = zstandard.frame_content_size(frame)
        except zstandard.ZstdError as exc:
            raise DecodeError(f"{where}: not a zstd frame: {exc}") from None
        if size != need:
            raise DecodeError(f"{where}: the frame announces {size} bytes, {need} bytes of packed codes expected")
        inflater = zstandard.ZstdDecompressor().decompressobj()
        try:
            # libzstd stops with an error as soon as a block would exceed the announced
            # content size, so this never inflates more than ``need`` bytes
            packed = inflater.decompress(frame)
        except zstandard.ZstdError as exc:
            raise DecodeError(f"{where}: corrupt zstd frame: {exc}") from None
        if len(packed) != need or not inflater.eof or inflater.unused_data:
            raise DecodeError(f"{where}: the zstd frame does not hold exactly the {need} bytes of packed codes")
        try:
            data = bitpack.unpack(packed, s.count, s.bits)
        except DecodeError as exc:
            raise DecodeError(f"{where}: {exc}") from None
        return Codes(data.reshape(s.shape), s.bits)
