"""Closed-loop, lossless delta coding of quantizer codes along the tokens.

After a quantizer, each token's codes are replaced by their difference from a reference
token's codes (its group's anchor, or the previous token), **modulo 2^bits** and
zigzag-mapped so that small differences of either sign become small codes. The width stays
``bits``, so the packed size is unchanged; the gain comes from an entropy coder after it
(``ans``), whose tables then see codes concentrated near 0. The mapping is a bijection of
``[0, 2^bits)`` for every reference value, so decoding recovers the codes exactly and no
error accumulates. Delta coding of KV caches: CacheGen (Liu et al., 2024,
arXiv:2310.07240). Arithmetic in ``specs/transforms.md`` §4.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import torch

from kvcodec.codec import Codes, Form, TensorStage
from kvcodec.errors import CodecError, DecodeError

from .reference import DEFAULT_GROUP, anchors, check_group, check_mode


def zigzag(d: torch.Tensor, bits: int) -> torch.Tensor:
    """``d`` in ``[0, 2^bits)`` read as a two's-complement ``bits``-bit number s, then
    ``2s`` for s ≥ 0 and ``−2s − 1`` for s < 0: 0, −1, 1, −2, … → 0, 1, 2, 3, …
    (integer tensors of at least 32 bits)."""
    s = d - ((d >> (bits - 1)) << bits)  # subtract 2^bits where the top bit is set
    return (s << 1) ^ -(s < 0).to(s.dtype)


def unzigzag(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`zigzag`: back to ``[0, 2^bits)``."""
    return ((z >> 1) ^ -(z & 1)) & ((1 << bits) - 1)


@attrs.frozen
class CodeDelta(TensorStage):
    """CODES → CODES, lossless: codes minus their reference token's codes, mod 2^bits,
    zigzag-mapped.

    Parameters:
        mode: ``"anchor"`` (default; groups of ``group`` tokens against their first token)
            or ``"seq"`` (each token against the previous one).
        group: tokens per anchor group (≥ 1, default 16); only for ``mode="anchor"``.

    encode: :class:`Codes` ``[B,H,T,D]`` of 1–16 bits → :class:`Codes` of the same shape,
    width and storage dtype; anchors (or token 0) unchanged; no side information.
    decode: the exact input codes.

    Raises:
        ValueError: for invalid parameters, at construction.
        CodecError: on encode, for codes that are not ``[B,H,T,D]`` within ``[0, 2^bits)``.
        DecodeError: on decode, for data that is not ``[B,H,T,D]`` codes within range.
    """

    name = "cdelta"
    family = "transform"
    accepts = Form.CODES
    produces = Form.CODES
    lossless = True

    mode: str = attrs.field(default="anchor", validator=check_mode)
    group: int = attrs.field(default=DEFAULT_GROUP, validator=check_group)

    def _values(self, x, error) -> torch.Tensor:
        if not isinstance(x, Codes) or x.data.dim() != 4 or x.data.is_floating_point():
            raise error(f"{self}: expected [batch, kv_heads, seq_len, head_dim] integer codes")
        c = x.data.to(torch.int32)
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << x.bits):
            raise error(f"{self}: codes outside 0..{(1 << x.bits) - 1} for {x.bits} bits")
        return c

    def encode(self, x: Codes) -> tuple[Codes, dict[str, torch.Tensor]]:
        c = self._values(x, CodecError)
        mask = (1 << x.bits) - 1
        out = c.clone()
        if self.mode == "anchor":
            a, is_anchor = anchors(c.shape[2], self.group, c.device)
            rest = ~is_anchor
            out[:, :, rest] = zigzag((c[:, :, rest] - c[:, :, a[rest]]) & mask, x.bits)
        else:
            out[:, :, 1:] = zigzag((c[:, :, 1:] - c[:, :, :-1]) & mask, x.bits)
        return Codes(out.to(x.data.dtype), x.bits), {}

    def decode(self, y: Codes, side: Mapping[str, torch.Tensor]) -> Codes:
        z = self._values(y, DecodeError)
        mask = (1 << y.bits) - 1
        if self.mode == "anchor":
            a, is_anchor = anchors(z.shape[2], self.group, z.device)
            rest = ~is_anchor
            out = z.clone()
            out[:, :, rest] = (z[:, :, a[rest]] + unzigzag(z[:, :, rest], y.bits)) & mask
        else:
            d = unzigzag(z, y.bits)
            d[:, :, 0] = z[:, :, 0]
            # the running sum in int64 (T · 2^16 fits easily), reduced modulo 2^bits
            out = torch.cumsum(d, dim=2, dtype=torch.int64) & mask
        return Codes(out.to(Codes.storage_dtype(y.bits)), y.bits)
