"""Uniform integer quantization of keys or values (INT2–INT8, INT16).

Per-token quantization (statistics over head_dim) is the classic choice for values;
per-channel (statistics over tokens) suits keys, whose outlier channels otherwise
dominate each token's range — the KIVI observation (Liu et al., 2024, "KIVI: A
Tuning-Free Asymmetric 2bit Quantization for KV Cache", arXiv:2402.02750). The exact
arithmetic (rounding, clamping, scale and zero-point dtype) is in ``specs/quantization.md``.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import torch

from kvcodec.codec import Codes, Form, TensorStage, side_tensor
from kvcodec.errors import DecodeError

from .grouping import AXES, Grouping, check_stats, finite_stats, round_to_side_dtype

WIDTHS = (2, 3, 4, 5, 6, 7, 8, 16)


def _bits_ok(_inst, attr, value: int) -> None:
    if value not in WIDTHS:
        hint = "; for 1 bit use 'sign'" if value == 1 else ""
        raise ValueError(f"bits must be one of {', '.join(map(str, WIDTHS))} (got {value}){hint}", attr)


@attrs.frozen
class UniformQuantizer(TensorStage):
    """Uniform ``bits``-bit integer quantizer over groups of a ``[B, H, T, D]`` float tensor.

    Parameters:
        bits: code width, 2–8 or 16. Codes are bit-packed densely on the wire.
        axis: ``"token"`` (per-token: statistics over head_dim) or ``"channel"``
            (per-channel: statistics over the tokens of each channel).
        group: group size G in elements along the reduced dimension; 0 = the whole
            dimension. Per-token G must divide head_dim; per-channel groups are runs of G
            tokens (the last may be shorter).
        sym: ``True``: symmetric (absmax) with codes ``-(2^(b-1)-1) … 2^(b-1)-1``;
            ``False``: asymmetric (min/max) with a zero point, codes ``0 … 2^b-1``.

    encode: float tensor ``[B,H,T,D]`` (any float dtype) → :class:`Codes` of the same
    shape (uint8, or int32 for 16 bits) and side information ``scale`` (and ``zero`` when
    asymmetric), float16 — float32 when float16 cannot hold them, see the spec — of shape
    ``[B,H,T,G_count]`` (token) or ``[B,H,D,G_count]`` (channel).
    decode: → float32 ``[B,H,T,D]``; error per element ≤ scale/2 (plus float32 rounding),
    the bound :meth:`error_bound` declares (``specs/quantization.md`` §7).

    Raises:
        ValueError: for invalid parameters, at construction.
        CodecError: on encode, if ``group`` does not divide head_dim (per-token).
        DecodeError: on decode, if codes or side information are inconsistent.
    """

    name = "int"
    family = "quantizer"
    accepts = Form.FLOAT
    produces = Form.CODES
    bits_in_name = True  # int4, not int:bits=4

    bits: int = attrs.field(default=8, validator=_bits_ok)
    axis: str = attrs.field(default="token", validator=attrs.validators.in_(AXES))
    group: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    sym: bool = False

    @property
    def qmax(self) -> int:
        """Largest code value."""
        return 2**self.bits - 1

    def encode(self, x: torch.Tensor) -> tuple[Codes, dict[str, torch.Tensor]]:
        grouping = Grouping.of(tuple(x.shape), self.axis, self.group)
        g = grouping.split(x.float())
        if self.sym:
            half = 2 ** (self.bits - 1) - 1
            scale = round_to_side_dtype(g.abs().amax(-1) / half, "up")
            s = scale.float().unsqueeze(-1)
            q = torch.round(g / torch.where(s == 0, 1.0, s)).clamp_(-half, half) + half
            side = {"scale": scale}
        else:
            zero = round_to_side_dtype(g.amin(-1), "down")
            z = zero.float().unsqueeze(-1)
            scale = round_to_side_dtype((g.amax(-1, keepdim=True) - z).squeeze(-1) / self.qmax, "up")
            s = scale.float().unsqueeze(-1)
            q = torch.round((g - z) / torch.where(s == 0, 1.0, s)).clamp_(0, self.qmax)
            side = {"scale": scale, "zero": zero}
        finite_stats(side, str(self))
        codes = grouping.merge(q).to(Codes.storage_dtype(self.bits))
        return Codes(codes, self.bits), side

    def error_bound(self, x: torch.Tensor, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``s/2 + 2^-21 · (|x| + |z| + qmax·s)`` per element (float64, shape of ``x``), where
        ``s`` and ``z`` are the element's group scale and zero point (``h`` = 2^(b−1) − 1
        instead of ``qmax`` and no ``z`` when symmetric): half a step, plus float32
        rounding in encode and decode (a few ulps of each term, ``specs/quantization.md`` §7).
        """
        grouping = Grouping.of(tuple(x.shape), self.axis, self.group)

        def per_element(stat: torch.Tensor) -> torch.Tensor:
            return grouping.merge(stat.double().unsqueeze(-1).expand(*grouping.stats_shape, grouping.size))

        s = per_element(side["scale"])
        top = 2 ** (self.bits - 1) - 1 if self.sym else self.qmax
        z = torch.zeros_like(s) if self.sym else per_element(side["zero"]).abs()
        return s / 2 + 2.0**-21 * (x.double().abs() + z + top * s)

    def decode(self, y: Codes, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(y, Codes) or y.bits != self.bits:
            raise DecodeError(f"{self}: expected {self.bits}-bit codes")
        grouping = Grouping.of(tuple(y.data.shape), self.axis, self.group, error=DecodeError)
        shape = grouping.stats_shape
        scale = check_stats(side_tensor(side, "scale", stage=str(self)), "scale", shape, str(self), positive=True)
        g = grouping.split(y.data.float())
        if self.sym:
            out = (g - (2 ** (self.bits - 1) - 1)) * scale.unsqueeze(-1)
        else:
            zero = check_stats(side_tensor(side, "zero", stage=str(self)), "zero", shape, str(self))
            out = g * scale.unsqueeze(-1) + zero.unsqueeze(-1)
        return grouping.merge(out)
