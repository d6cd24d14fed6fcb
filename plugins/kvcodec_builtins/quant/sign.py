"""1-bit sign quantization with a mean-absolute scale.

Each element becomes its sign; each group keeps one scale, the mean of the absolute
values, so ``x̂ = sign(x) · mean|x|``. The mean-absolute scale minimises the L2 error of a
sign code (Rastegari et al., 2016, "XNOR-Net", arXiv:1603.05279). Arithmetic in
``specs/quantization.md`` §5.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import torch

from kvcodec.codec import Codes, Form, TensorStage, side_tensor
from kvcodec.errors import DecodeError

from .grouping import AXES, Grouping, check_stats, finite_stats, round_to_side_dtype


@attrs.frozen
class SignQuantizer(TensorStage):
    """1-bit quantizer: code 1 for ``x ≥ 0``, 0 for ``x < 0``; one scale (mean |x|) per group.

    Parameters ``axis`` and ``group`` as for :class:`UniformQuantizer`.

    encode: float ``[B,H,T,D]`` → 1-bit :class:`Codes` (uint8) and side ``scale`` (float16,
    or float32 when float16 cannot hold it) of the grouping's stats shape.
    decode: → float32 ``[B,H,T,D]``, ``(2·code − 1) · scale``.

    Raises:
        CodecError: on encode, if ``group`` does not divide head_dim (per-token).
        DecodeError: on decode, if codes or side information are inconsistent.
    """

    name = "sign"
    family = "quantizer"
    accepts = Form.FLOAT
    produces = Form.CODES

    axis: str = attrs.field(default="token", validator=attrs.validators.in_(AXES))
    group: int = attrs.field(default=0, validator=attrs.validators.ge(0))

    def encode(self, x: torch.Tensor) -> tuple[Codes, dict[str, torch.Tensor]]:
        grouping = Grouping.of(tuple(x.shape), self.axis, self.group)
        g = grouping.split(x.float())
        # mean over the group's real elements: a short last channel run is padded with copies
        # of its last token, which must not count (they would bias the mean towards it)
        a = g.abs()
        pad = grouping.count * grouping.size - x.shape[2] if grouping.axis == "channel" else 0
        if pad:
            a[..., -1, grouping.size - pad :] = 0
        mean = a.sum(-1) / grouping.lengths().to(a.device)
        scale = round_to_side_dtype(mean, "nearest")
        codes = grouping.merge((g >= 0).to(torch.uint8))
        return Codes(codes, 1), finite_stats({"scale": scale}, str(self))

    def error_bound(self, x: torch.Tensor, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``| |x| − s |`` per element (float64, shape of ``x``), ``s`` the element's group
        scale: each element decodes to exactly ``±s`` with the sign of ``x`` (−0.0 gives
        ``+s``), so this is the error itself; a flipped sign would cost ``|x| + s``.
        """
        grouping = Grouping.of(tuple(x.shape), self.axis, self.group)
        s = side["scale"].double().unsqueeze(-1).expand(*grouping.stats_shape, grouping.size)
        return (x.double().abs() - grouping.merge(s)).abs()

    def decode(self, y: Codes, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(y, Codes) or y.bits != 1:
            raise DecodeError(f"{self}: expected 1-bit codes")
        grouping = Grouping.of(tuple(y.data.shape), self.axis, self.group, error=DecodeError)
        scale = check_stats(side_tensor(side, "scale", stage=self.name), "scale", grouping.stats_shape, self.name, True)
        g = grouping.split(y.data.float() * 2 - 1)
        return grouping.merge(g * scale.unsqueeze(-1))
