"""Three deliberately broken kvcodec codecs, each a plausible, subtle plugin-author mistake,
planted by someone who had not read the contract suite (issue 4's blind test).

The suite as it then was caught ``blind_a`` (per-head scales that assume batch 1) and
``blind_b`` (a float16 zero point rounded to nearest instead of down), both by its accuracy
check, and missed ``blind_c`` (decode returns float16, so finite values beyond ±65504 in a
float32 or bfloat16 cache come back as ±inf): no standard cache held such values. The
standard caches now do (see ``kvcodec.testing.caches.standard_caches``).

Each faulty codec (``blind_a``, ``blind_b``, ``blind_c``) has a *control* twin
(``blind_a_fixed`` …) that differs only by the one-line fix (switched by the ``_fixed``
class attribute). The controls exist so that a failure of the contract suite on a faulty
codec can be attributed to the intended fault and not to some unrelated slip.
"""

from __future__ import annotations

from typing import ClassVar, Mapping

import attrs
import torch

import kvcodec
from kvcodec.codec import Codes, Form, TensorStage, side_tensor
from kvcodec.errors import CodecError, DecodeError
from kvcodec_builtins.quant.grouping import check_stats, round_to_side_dtype

F32_MAX = torch.finfo(torch.float32).max
MIN_SCALE = 2.0**-126  # keep scales normal, as kvcodec-fp8 does
HALF = 127  # symmetric int8: codes 0..254 stand for -127..127


def _finite_float4(stage, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise CodecError(f"{stage}: expected a float tensor [batch, kv_heads, seq_len, head_dim]")
    x32 = x.float()
    if not bool(torch.isfinite(x32).all()):
        raise CodecError(f"{stage}: cannot quantize NaN or inf; send such layers with identity or fp16")
    return x32


def _sym_scale(absmax: torch.Tensor) -> torch.Tensor:
    return torch.where(absmax > 0, (absmax / HALF).clamp(min=MIN_SCALE), torch.zeros_like(absmax))


def _sym_codes(x32: torch.Tensor, scale: torch.Tensor) -> Codes:
    div = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x32 / div).clamp(-HALF, HALF) + HALF
    return Codes(q.to(torch.uint8), 8)


def _check_sym_codes(stage, y) -> torch.Tensor:
    if not isinstance(y, Codes) or y.bits != 8 or y.data.dtype != torch.uint8 or y.data.dim() != 4:
        raise DecodeError(f"{stage}: expected 8-bit codes [batch, kv_heads, seq_len, head_dim]")
    if bool((y.data > 2 * HALF).any()):
        raise DecodeError(f"{stage}: code 255 never written by the encoder")
    return y.data


def _check_scale(stage, side, shape) -> torch.Tensor:
    s = side_tensor(side, "scale", shape=shape, dtypes=(torch.float32,), stage=str(stage))
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise DecodeError(f"{stage}: scale holds negative or non-finite values")
    return s


def _sym_bound(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    # half a step, plus a few float32 ulps of each term (division, rounding, product)
    return s / 2 + 2.0**-20 * (x.double().abs() + HALF * s) + 2.0**-140


# --------------------------------------------------------------------------- blind_a
@attrs.frozen
class PerHeadInt8(TensorStage):
    """blind_a — symmetric int8 with ONE scale per KV head (vLLM-style per-head KV scales).

    FAULT: the per-head absmax is computed with ``x.reshape(kv_heads, -1)``, which is the
    per-head view only when batch == 1 (the author only ever ran batch-1 inference). With
    batch > 1 and kv_heads > 1 the "head h" row holds a slice of *batch rows* instead, so a
    head's scale comes from the wrong elements; elements larger than it are clamped to
    ±127 codes, and the reconstruction error far exceeds the declared bound (half a step).
    The fix (``_fixed``) is ``x.transpose(0, 1).reshape(kv_heads, -1)``.
    """

    name = "blind_a"
    family = "quantizer"
    version = 1
    accepts = Form.FLOAT
    produces = Form.CODES
    _fixed: ClassVar[bool] = False

    def _absmax(self, x32: torch.Tensor) -> torch.Tensor:
        h = x32.shape[1]
        rows = x32.transpose(0, 1).reshape(h, -1) if self._fixed else x32.reshape(h, -1)  # <-- the bug
        return rows.abs().amax(-1) if rows.shape[1] else torch.zeros(h, device=x32.device)

    def encode(self, x):
        x32 = _finite_float4(self, x)
        scale = _sym_scale(self._absmax(x32))  # [H]
        return _sym_codes(x32, scale.view(1, -1, 1, 1)), {"scale": scale}

    def error_bound(self, x, side):
        return _sym_bound(x, side["scale"].double().view(1, -1, 1, 1))

    def decode(self, y, side: Mapping[str, torch.Tensor]):
        data = _check_sym_codes(self, y)
        scale = _check_scale(self, side, (data.shape[1],))
        out = (data.float() - HALF) * scale.view(1, -1, 1, 1)
        return out.clamp(-F32_MAX, F32_MAX)


@attrs.frozen
class PerHeadInt8Fixed(PerHeadInt8):
    """Control for blind_a: identical but for the transpose."""

    name = "blind_a_fixed"
    _fixed: ClassVar[bool] = True


# --------------------------------------------------------------------------- blind_b
@attrs.frozen
class ChannelInt8(TensorStage):
    """blind_b — KIVI-style per-channel asymmetric int8 (one group = all tokens of one
    channel of one head), with float16 side information (scale and zero point) to halve
    its size, falling back to float32 when float16 cannot hold it.

    FAULT: the zero point (the group minimum) is rounded to float16 to *nearest* instead of
    *down*. When it rounds up, the group's smallest elements lie below the zero point and
    clamp to code 0, an error of up to half a float16 ulp of the minimum (2^-12·|min|) that
    the declared bound (half a step + float32 rounding, which assumes an exact or
    floored zero point) does not include. It bites when a channel has a large offset and a
    small spread (a biased outlier channel), and always for constant groups — in
    particular every group of a ``seq_len == 1`` layer of a float32 cache. The scale is
    computed from the rounded zero point and rounded up, and clamped at 0, so nothing else
    looks wrong. The fix (``_fixed``) is one word: ``"down"`` instead of ``"nearest"``.
    """

    name = "blind_b"
    family = "quantizer"
    version = 1
    accepts = Form.FLOAT
    produces = Form.CODES
    QMAX: ClassVar[int] = 255
    _fixed: ClassVar[bool] = False

    def encode(self, x):
        x32 = _finite_float4(self, x)
        lo = x32.amin(-2, keepdim=True) if x32.shape[2] else x32.sum(-2, keepdim=True)  # [B,H,1,D]
        hi = x32.amax(-2, keepdim=True) if x32.shape[2] else lo
        zero = round_to_side_dtype(lo, "down" if self._fixed else "nearest")  # <-- the bug
        z = zero.float()
        scale = round_to_side_dtype(((hi - z) / self.QMAX).clamp(min=0), "up")
        s = scale.float()
        q = torch.round((x32 - z) / torch.where(s == 0, 1.0, s)).clamp(0, self.QMAX)
        side = {"scale": scale, "zero": zero}
        for k, t in side.items():
            if not bool(torch.isfinite(t).all()):
                raise CodecError(f"{self}: {k} is not finite (range beyond float32)")
        return Codes(q.to(torch.uint8), 8), side

    def error_bound(self, x, side):
        s = side["scale"].double()
        z = side["zero"].double().abs()
        return s / 2 + 2.0**-21 * (x.double().abs() + z + self.QMAX * s)

    def decode(self, y, side: Mapping[str, torch.Tensor]):
        if not isinstance(y, Codes) or y.bits != 8 or y.data.dtype != torch.uint8 or y.data.dim() != 4:
            raise DecodeError(f"{self}: expected 8-bit codes [batch, kv_heads, seq_len, head_dim]")
        b, h, t, d = y.data.shape
        shape = (b, h, 1, d)
        scale = check_stats(side_tensor(side, "scale", stage=str(self)), "scale", shape, str(self), positive=True)
        zero = check_stats(side_tensor(side, "zero", stage=str(self)), "zero", shape, str(self))
        return (y.data.float() * scale + zero).clamp(-F32_MAX, F32_MAX)


@attrs.frozen
class ChannelInt8Fixed(ChannelInt8):
    """Control for blind_b: the zero point is rounded down."""

    name = "blind_b_fixed"
    _fixed: ClassVar[bool] = True


# --------------------------------------------------------------------------- blind_c
@attrs.frozen
class HalfOutInt8(TensorStage):
    """blind_c — per-token symmetric int8 (float32 scale per token and head) whose decode
    returns **float16** ("KV caches are half precision anyway; it halves decode memory").

    The author even widened the error bound by float16's rounding (2^-11 relative plus
    2^-25 absolute), so accuracy checks on ordinary values pass.

    FAULT: float16's *range*. A float32 or bfloat16 cache holding a value beyond ±65504
    (massive activations / attention-sink outliers in bf16 models) decodes to ±inf: a
    finite value becomes infinite, an infinite error against a finite declared bound.
    kvcodec's own saturating cast to the cache dtype cannot help: the inf already exists.
    The fix (``_fixed``) returns float32.
    """

    name = "blind_c"
    family = "quantizer"
    version = 1
    accepts = Form.FLOAT
    produces = Form.CODES
    _fixed: ClassVar[bool] = False

    def encode(self, x):
        x32 = _finite_float4(self, x)
        scale = _sym_scale(x32.abs().amax(-1, keepdim=True) if x32.shape[-1] else x32.sum(-1, keepdim=True))
        return _sym_codes(x32, scale), {"scale": scale}

    def error_bound(self, x, side):
        s = side["scale"].double()
        # quantization + float32 rounding, then float16 rounding of the decoded value
        return _sym_bound(x, s) + 2.0**-11 * (x.double().abs() + s) + 2.0**-25

    def decode(self, y, side: Mapping[str, torch.Tensor]):
        data = _check_sym_codes(self, y)
        b, h, t, d = data.shape
        scale = _check_scale(self, side, (b, h, t, 1))
        out = ((data.float() - HALF) * scale).clamp(-F32_MAX, F32_MAX)
        return out if self._fixed else out.to(torch.float16)  # <-- the bug


@attrs.frozen
class HalfOutInt8Fixed(HalfOutInt8):
    """Control for blind_c: decodes to float32."""

    name = "blind_c_fixed"
    _fixed: ClassVar[bool] = True


FAULTY = {"blind_a": PerHeadInt8, "blind_b": ChannelInt8, "blind_c": HalfOutInt8}
FIXED = {"blind_a": PerHeadInt8Fixed, "blind_b": ChannelInt8Fixed, "blind_c": HalfOutInt8Fixed}
ALL = (*FAULTY.values(), *FIXED.values())


@kvcodec.hookimpl
def register_codecs(register):
    for cls in ALL:
        register(cls)
