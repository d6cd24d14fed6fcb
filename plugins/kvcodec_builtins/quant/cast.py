"""Casts: identity (native precision) and FP16 (IEEE 754 binary16, saturating)."""

from __future__ import annotations

from typing import Mapping

import attrs
import torch

from kvcodec.codec import Form, TensorStage
from kvcodec.errors import DecodeError

from .grouping import FP16_MAX


def _float(y, stage: str, dtypes=None) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or not y.is_floating_point() or (dtypes and y.dtype not in dtypes):
        raise DecodeError(f"{stage}: expected a float tensor{' of ' + str(dtypes) if dtypes else ''}")
    return y


@attrs.frozen
class Identity(TensorStage):
    """Send keys or values in their native dtype (float32, float16 or bfloat16), unchanged.

    encode/decode: ``[B,H,T,D]`` float tensor → the same tensor; no side information.
    """

    name = "identity"
    family = "cast"
    accepts = Form.FLOAT
    produces = Form.FLOAT
    lossless = True

    def encode(self, x: torch.Tensor):
        return x, {}

    def decode(self, y, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return _float(y, self.name)


@attrs.frozen
class FP16Cast(TensorStage):
    """Cast to IEEE 754 half precision (2 bytes per element).

    Values beyond ±65504 (FP16's largest finite value) saturate to ±65504 instead of
    becoming ±inf; NaN stays NaN; other values round to nearest even.

    encode: float ``[B,H,T,D]`` → float16 ``[B,H,T,D]``; decode: float16 → the same tensor
    (the pipeline casts it back to the cache dtype).
    """

    name = "fp16"
    family = "cast"
    accepts = Form.FLOAT
    produces = Form.FLOAT

    def encode(self, x: torch.Tensor):
        return x.float().clamp(-FP16_MAX, FP16_MAX).to(torch.float16), {}

    def error_bound(self, x: torch.Tensor, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``max(|x| − 65504, 0) + 2^-11 · min(|x|, 65504) + 2^-25`` per element (float64):
        saturation beyond FP16's range, half an ulp (relative 2^-11) inside it, and half
        the subnormal spacing (2^-25) near zero.
        """
        a = x.double().abs()
        return (a - FP16_MAX).clamp(min=0) + 2.0**-11 * a.clamp(max=FP16_MAX) + 2.0**-25

    def decode(self, y, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # any float dtype: after a later stage (fp16+int4) the input is that stage's float32
        # reconstruction of the float16 values, not float16 itself
        return _float(y, self.name)
