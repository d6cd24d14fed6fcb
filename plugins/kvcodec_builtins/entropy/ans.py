"""rANS entropy coding of quantizer codes with per-head or per-channel frequency tables.

Range asymmetric numeral systems (Duda, 2013, "Asymmetric numeral systems: entropy coding
combining speed of Huffman coding with compression rate of arithmetic coding",
arXiv:1311.2540) as implemented by ``constriction`` (Bamler, 2022, "Understanding Entropy
Coding With Asymmetric Numeral Systems (ANS): a Statistician's Perspective",
arXiv:2201.01741): ``constriction.stream.stack.AnsCoder`` with
``constriction.stream.model.Categorical(frequencies, perfect=False)``. The stream layout,
the table format and the exact arithmetic of the coder are in
``specs/entropy-coding.md``.
"""

from __future__ import annotations

import struct
from typing import Mapping

import attrs
import constriction
import numpy as np
import torch

from kvcodec import bitpack
from kvcodec.codec import Codes, Form, TensorStage
from kvcodec.errors import CodecError, DecodeError

from . import container, tables

_Categorical = constriction.stream.model.Categorical
_AnsCoder = constriction.stream.stack.AnsCoder


def _model(frequencies: np.ndarray):
    """The entropy model both sides build from a table's integer frequencies (§4.1)."""
    return _Categorical(frequencies.astype(np.float64), perfect=False)


@attrs.frozen
class ANSCoder(TensorStage):
    """Lossless CODES → BYTES stage: rANS over the codes, one frequency table per context.

    Parameters:
        context: ``"head"`` (one table per KV head, default), ``"channel"`` (one per KV
            head and channel: suits per-channel quantizers, costs H·D tables) or
            ``"tensor"`` (one table per layer's keys or values).
        precision: frequencies are scaled down to a total of about ``2**precision`` when
            a stream has more symbols (§3.2); 4–24, default 12. Larger tables model the
            codes more exactly and cost more bytes.

    encode: :class:`Codes` of 1–16 bits, ``[B,H,T,D]`` (any shape when ``context`` is
    ``"tensor"``), at most 2**30 codes → ``bytes``: the stream of
    ``specs/entropy-coding.md`` §2, no side information. The tables travel inside the
    stream; when tables and words are not shorter than the bit-packed codes the stream
    holds the packed codes instead (mode 0), so ``len(stream) ≤ 2 + 4·ndim + 1 +
    ceil(n·bits/8)``: one byte more than the wire format's CODES data.
    decode: → the identical :class:`Codes` (uint8 up to 8 bits, int32 above).

    Raises:
        CodecError: on encode, for input that is not codes within ``[0, 2**bits)``, or not
            rank 4 for ``"head"`` / ``"channel"``.
        DecodeError: on decode, for a truncated or inconsistent stream: bad geometry, bad
            tables (range, frequencies, varints), or ANS words that do not decode to
            exactly the declared codes.
    """

    name = "ans"
    family = "entropy"
    accepts = Form.CODES
    produces = Form.BYTES
    lossless = True

    context: str = attrs.field(default="head", validator=attrs.validators.in_(tables.CONTEXTS))
    precision: int = attrs.field(default=12, validator=[attrs.validators.ge(4), attrs.validators.le(24)])

    @property
    def _ndims(self) -> tuple[int, ...] | None:
        return None if self.context == "tensor" else (4,)

    def encode(self, x: Codes) -> tuple[bytes, dict[str, torch.Tensor]]:
        x = container.check_codes(x, str(self))
        if self._ndims is not None and x.data.dim() not in self._ndims:
            raise CodecError(f"{self}: context={self.context} needs [B,H,T,D] codes, got shape {tuple(x.data.shape)}")
        values = x.data.detach().cpu().numpy()
        packed = bitpack.pack(x.data, x.bits)
        return container.assemble(x, packed, self._coded(values, x.bits)), {}

    def _coded(self, values: np.ndarray, bits: int) -> bytes:
        """The mode-1 body: ``table_len u32 · word_count u32 · tables · words`` (§4)."""
        streams = tables.split(values, self.context)  # [K, n] int64
        k_count, n = streams.shape
        if n == 0:
            return struct.pack("<II", 2 * k_count, 0) + bytes(2 * k_count)  # K empty tables, no words
        lo, hi = streams.min(axis=1), streams.max(axis=1)
        symbols = (streams - lo[:, None]).astype(np.int32)
        alphabet = 1 << bits
        if k_count * alphabet <= 1 << 22:  # all histograms in one pass
            offsets = (np.arange(k_count, dtype=np.int64) * alphabet)[:, None]
            flat = np.bincount((symbols + offsets).reshape(-1), minlength=k_count * alphabet)
            counts = flat.reshape(k_count, alphabet)
        else:
            counts = None
        fields: list[np.ndarray] = []
        freqs: list[np.ndarray] = []
        for k in range(k_count):
            m = int(hi[k] - lo[k]) + 1
            c = counts[k, :m] if counts is not None else np.bincount(symbols[k], minlength=m)
            f = tables.quantize_counts(c, self.precision)
            fields.append(np.concatenate(([lo[k], m], f)))
            freqs.append(f)
        coder = _AnsCoder()
        for k in range(k_count - 1, -1, -1):  # a stack: the table pushed last is decoded first
            if freqs[k].size > 1:
                coder.encode_reverse(symbols[k], _model(freqs[k]))
        table_bytes = tables.varint_encode(np.concatenate(fields))
        words = coder.get_compressed().astype("<u4")
        return struct.pack("<II", len(table_bytes), words.size) + table_bytes + words.tobytes()

    def decode(self, y: bytes, side: Mapping[str, torch.Tensor]) -> Codes:
        where = str(self)
        s = container.parse(y, where, self._ndims)
        if s.mode == container.RAW:
            return s.raw(where)
        body = s.body
        if len(body) < 8:
            raise DecodeError(f"{where}: truncated: the coded body has no table length and word count")
        table_len, word_count = struct.unpack_from("<II", body, 0)
        k_count = tables.table_count(self.context, s.shape)
        if table_len < 2 * k_count or len(body) != 8 + table_len + 4 * word_count:
            raise DecodeError(
                f"{where}: {k_count} tables in {table_len} bytes and {word_count} ANS words do not make"
                f" the {len(body)}-byte body"
            )
        fields = tables.varint_decode(body[8 : 8 + table_len], where)
        words = np.frombuffer(body[8 + table_len :], dtype="<u4").astype(np.uint32)
        if words.size and words[-1] == 0:
            raise DecodeError(f"{where}: the last ANS word is zero (constriction never writes one)")
        n = s.count // k_count if k_count else 0
        out = np.empty((k_count, n), dtype=np.uint8 if s.bits <= 8 else np.int32)
        coder = _AnsCoder(words)
        pos = 0
        for k in range(k_count):
            if pos + 2 > fields.size:
                raise DecodeError(f"{where}: the tables end inside table {k}")
            lo, m = int(fields[pos]), int(fields[pos + 1])
            f = fields[pos + 2 : pos + 2 + m]
            pos += 2 + m
            if f.size != m:
                raise DecodeError(f"{where}: table {k} announces {m} frequencies, the tables end first")
            if n == 0:
                if lo or m:
                    raise DecodeError(f"{where}: table {k} describes symbols of an empty stream")
                continue
            if m < 1 or lo + m > 1 << s.bits or not tables.frequencies_ok(f, n, self.precision):
                raise DecodeError(
                    f"{where}: table {k} (lo {lo}, {m} symbols) is not a valid table for {n} {s.bits}-bit codes"
                )
            if m == 1:
                out[k] = lo
            else:
                out[k] = coder.decode(_model(f), n) + lo
        if pos != fields.size:
            raise DecodeError(f"{where}: {fields.size - pos} table values after the last table")
        if not coder.is_empty():
            raise DecodeError(f"{where}: the ANS words do not decode to exactly the declared codes")
        return container.storage(tables.merge(out, self.context, s.shape), s.bits, s.shape)
