"""The embedded mid-rise uniform quantizer ``prog`` (``specs/progressive.md`` §2–§4).

A *mid-rise* uniform quantizer cuts a group's range ``[min, min + range]`` into ``2^b``
equal bins and reconstructs each element at the centre of its bin; unlike the
round-to-nearest ``int`` quantizer (``scale = range / (2^b − 1)``), its grid for ``b`` bits
is the grid for ``b + 1`` bits with every other boundary removed. So the code is
*embedded*: with ``t = (x − min) / range``,

    q_B = clamp(floor(t · 2^B), 0, 2^B − 1)   and   q_B >> (B − b) = clamp(floor(t · 2^b), 0, 2^b − 1)

exactly (``t · 2^B`` is an exact float32 product), so the ``b`` most significant bits of
a ``B``-bit code are the ``b``-bit quantizer's code. Sending the codes bit plane by bit
plane, most significant first, gives a stream any prefix of which decodes to a coarser
cache — the *embedded* / bit-plane coding of progressive image transmission (Shapiro,
1993, "Embedded image coding using zerotrees of wavelet coefficients", EZW; Said &
Pearlman, 1996, SPIHT; Taubman, 2000, "High performance scalable image compression with
EBCOT"), here without the wavelet transform or the context modelling. The container that
sends the planes is :mod:`kvcodec.progressive`.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import torch

from kvcodec.codec import Codes, Form, TensorStage, side_tensor
from kvcodec.errors import DecodeError

from ..quant.grouping import AXES, Grouping, check_stats, finite_stats, round_to_side_dtype

MAX_BITS = 16


def _bits_ok(_inst, attr, value: int) -> None:
    if not 1 <= value <= MAX_BITS:
        raise ValueError(f"bits must be 1..{MAX_BITS} (got {value})", attr)


def group_stats(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Side information of grouped float32 values ``g`` ``[*stats_shape, size]``.

    Returns ``(min, range)``, each of the stats shape: ``min = side(min g + 0, down)`` and
    ``range = side(fl(max g − min_sent) + 0, up)`` (adding +0 makes a zero positive) (``specs/progressive.md`` §3), float16 when
    float16 holds the whole tensor faithfully, else float32 (``specs/quantization.md`` §4).
    Rounding ``min`` down and ``range`` up keeps every element inside the grid.
    """
    # "+ 0.0" turns a −0 into +0: min and max may return either zero when a group holds
    # both, and the side information must not depend on that choice
    zero = round_to_side_dtype(g.amin(-1) + 0.0, "down")
    span = round_to_side_dtype((g.amax(-1) - zero.float()) + 0.0, "up")
    return zero, span


def embedded_codes(g: torch.Tensor, zero: torch.Tensor, span: torch.Tensor, bits: int) -> torch.Tensor:
    """Mid-rise codes of ``bits`` bits: ``clamp(floor(fl(fl(g − z) / r') · 2^bits), 0, 2^bits − 1)``.

    Args:
        g: float32 ``[*stats_shape, size]``.
        zero, span: side information ``[*stats_shape]`` (float16 or float32); ``r' = r``,
            or 1 where ``r = 0`` (a constant group, all codes 0).
        bits: 0–16 (0 gives all-zero codes).

    Returns:
        float32 codes (integers in ``[0, 2^bits)``), shape of ``g``.
    """
    z = zero.float().unsqueeze(-1)
    r = span.float().unsqueeze(-1)
    t = (g - z) / torch.where(r == 0, 1.0, r)
    return torch.floor(t * float(2**bits)).clamp_(0, 2**bits - 1)


def reconstruct(q: torch.Tensor, zero: torch.Tensor, span: torch.Tensor, planes: int) -> torch.Tensor:
    """Bin centres of ``planes``-bit codes: ``fl(fl((q + 0.5) · fl(r · 2^−planes)) + z)``, float32.

    Args:
        q: codes ``[*stats_shape, size]`` (any numeric dtype), each in ``[0, 2^planes)``.
        zero, span: side information ``[*stats_shape]``.
        planes: 0–16; 0 gives every element its group's midpoint ``z + r/2``.
    """
    step = (span.float() * 2.0**-planes).unsqueeze(-1)
    return (q.float() + 0.5) * step + zero.float().unsqueeze(-1)


@attrs.frozen
class ProgressiveQuantizer(TensorStage):
    """Embedded mid-rise uniform ``bits``-bit quantizer over groups of a ``[B, H, T, D]`` tensor.

    The ``b``-bit prefix of its codes (``code >> (bits − b)``) is bit for bit the code of
    the ``b``-bit mid-rise quantizer over the same range and decodes with the same side
    information; :mod:`kvcodec.progressive` sends the codes as bit planes. As a stage it
    is a plain fixed-width quantizer (``prog8``): the wire format sends all ``bits`` bits.

    Parameters:
        bits: code width B, 1–16 (spec ``prog4`` = ``prog:bits=4``).
        axis: ``"token"`` (statistics over head_dim) or ``"channel"`` (over tokens), as
            for ``int`` (``specs/quantization.md`` §2).
        group: group size along the reduced dimension; 0 = the whole dimension.

    encode: float tensor ``[B,H,T,D]`` (any float dtype; computed in float32) →
    :class:`Codes` of the same shape (uint8 up to 8 bits, int32 above) and side
    information ``min`` then ``range``, each float16 (float32 when float16 cannot hold the
    tensor's values faithfully) of shape ``[B,H,T,C]`` (token) or ``[B,H,D,C]`` (channel).
    decode: → float32 ``[B,H,T,D]``, the bin centre ``min + (q + 0.5) · range / 2^bits``;
    error per element ≤ ``range / 2^(bits+1)`` plus float32 rounding (:meth:`error_bound`).

    Raises:
        ValueError: invalid parameters, at construction.
        CodecError: on encode, a group size that does not divide head_dim (token axis), or
            non-finite input.
        DecodeError: on decode, codes or side information that are inconsistent.
    """

    name = "prog"
    family = "quantizer"
    accepts = Form.FLOAT
    produces = Form.CODES
    bits_in_name = True  # prog8, not prog:bits=8

    bits: int = attrs.field(default=8, validator=_bits_ok)
    axis: str = attrs.field(default="token", validator=attrs.validators.in_(AXES))
    group: int = attrs.field(default=0, validator=attrs.validators.ge(0))

    def grouping(self, shape: tuple[int, ...], error=None) -> Grouping:
        """The grouping of a ``[B,H,T,D]`` shape (``error``: the exception class to raise)."""
        if error is None:
            return Grouping.of(tuple(shape), self.axis, self.group)
        return Grouping.of(tuple(shape), self.axis, self.group, error=error)

    def encode(self, x: torch.Tensor) -> tuple[Codes, dict[str, torch.Tensor]]:
        grouping = self.grouping(tuple(x.shape))
        g = grouping.split(x.float())
        zero, span = group_stats(g)
        side = finite_stats({"min": zero, "range": span}, str(self))
        q = embedded_codes(g, zero, span, self.bits)
        return Codes(grouping.merge(q).to(Codes.storage_dtype(self.bits)), self.bits), side

    def error_bound(self, x: torch.Tensor, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``r / 2^(bits+1) + 2^-21 · (|x| + |z| + r) + 2^-146`` per element (float64, shape
        of ``x``), ``z`` and ``r`` the element's group min and range: half a bin, plus
        float32 rounding in encode and decode, relative for normal numbers and a few units of
        the smallest subnormal (2^-149) below them (``specs/progressive.md`` §4.3)."""
        grouping = self.grouping(tuple(x.shape))

        def per_element(stat: torch.Tensor) -> torch.Tensor:
            return grouping.merge(stat.double().unsqueeze(-1).expand(*grouping.stats_shape, grouping.size))

        r = per_element(side["range"])
        z = per_element(side["min"]).abs()
        return r * 2.0 ** -(self.bits + 1) + 2.0**-21 * (x.double().abs() + z + r) + 2.0**-146

    def side_info(self, side: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated ``(min, range)`` as float32 for codes of ``shape`` ``[B,H,T,D]``.

        Raises:
            DecodeError: a missing array, a wrong dtype or shape, a non-finite value or a
                negative range.
        """
        stats = self.grouping(shape, DecodeError).stats_shape
        zero = check_stats(side_tensor(side, "min", stage=str(self)), "min", stats, str(self))
        span = check_stats(side_tensor(side, "range", stage=str(self)), "range", stats, str(self), positive=True)
        return zero, span

    def decode_prefix(self, q: torch.Tensor, planes: int, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Decode the ``planes`` most significant bits of the codes (``q`` ``[B,H,T,D]``,
        integers in ``[0, 2^planes)``; ``planes`` 0 … ``bits``) to float32 ``[B,H,T,D]``:
        the ``planes``-bit mid-rise reconstruction.

        Raises:
            DecodeError: if ``planes`` is outside 0 … ``bits`` or the side information is
                inconsistent with ``q``.
        """
        if not 0 <= planes <= self.bits:
            raise DecodeError(f"{self}: {planes} planes is outside 0..{self.bits}")
        if q.dim() != 4:
            raise DecodeError(f"{self}: expected codes of rank 4, got shape {tuple(q.shape)}")
        grouping = self.grouping(tuple(q.shape), DecodeError)
        zero, span = self.side_info(side, tuple(q.shape))
        return grouping.merge(reconstruct(grouping.split(q), zero, span, planes))

    def decode(self, y: Codes, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(y, Codes) or y.bits != self.bits:
            raise DecodeError(f"{self}: expected {self.bits}-bit codes")
        return self.decode_prefix(y.data, self.bits, side)
