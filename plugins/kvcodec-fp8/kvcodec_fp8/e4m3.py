"""FP8 (E4M3) quantization of keys or values with a float32 scale per token or per channel.

E4M3 is the 8-bit floating-point format with 1 sign, 4 exponent and 3 mantissa bits of
Micikevicius et al., 2022, "FP8 Formats for Deep Learning" (arXiv:2209.05433), as torch
implements it (``torch.float8_e4m3fn``: no infinities, largest finite value 448, smallest
normal 2^-6, subnormal spacing 2^-9, codes ``0x7F`` and ``0xFF`` are NaN). Scaling each
group so that its largest magnitude maps to 448 uses the whole range of the format, as
FP8 KV caches in inference engines do.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import torch

from kvcodec import CodecError, Codes, DecodeError, Form, TensorStage
from kvcodec.codec import side_tensor

__all__ = ["E4M3", "E4M3_MAX"]

E4M3_MAX = 448.0
#: scales never go below float32's smallest normal: a subnormal scale would lose the
#: relative precision that the error bound relies on
MIN_SCALE = 2.0**-126
AXES = ("token", "channel")


@attrs.frozen
class E4M3(TensorStage):
    """FP8 E4M3 quantizer: ``q = e4m3(x / s)``, decoded as ``q · s``.

    Parameters:
        axis: ``"token"``: one scale per token and KV head, over head_dim (the default);
            ``"channel"``: one scale per channel and KV head, over the tokens (suits keys,
            whose outlier channels would otherwise set every token's scale).

    encode: float ``[B,H,T,D]`` (float32, float16 or bfloat16) → 8-bit :class:`~kvcodec.Codes`
    ``[B,H,T,D]`` (uint8: the E4M3 bit patterns) and side information ``scale``, float32,
    ``[B,H,T,1]`` (token) or ``[B,H,1,D]`` (channel): ``max(absmax / 448, 2^-126)`` of the
    group, or 0 for an all-zero group. One byte per element plus 4 per group.

    decode: → float32 ``[B,H,T,D]``, ``float(q) · scale``; per element the error is at most
    :meth:`error_bound`: ``2^-4·|x| + 2^-10·s`` plus float32 rounding.

    Raises:
        ValueError: at construction, for an unknown ``axis``.
        CodecError: on encode, for input that is not a finite float tensor of rank 4.
        DecodeError: on decode, for codes that are not 8-bit ``[B,H,T,D]`` uint8, NaN
            codes (``0x7F``, ``0xFF``, which the encoder never writes), or a missing,
            mistyped, misshapen, negative or non-finite ``scale``.
    """

    name = "e4m3"
    family = "quantizer"
    version = 1
    accepts = Form.FLOAT
    produces = Form.CODES
    lossless = False

    axis: str = attrs.field(default="token", validator=attrs.validators.in_(AXES))

    @property
    def _reduce(self) -> int:
        return -1 if self.axis == "token" else -2

    def _scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        b, h, t, d = shape
        return (b, h, t, 1) if self.axis == "token" else (b, h, 1, d)

    def encode(self, x: torch.Tensor) -> tuple[Codes, dict[str, torch.Tensor]]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
            raise CodecError(f"{self}: expected a float tensor [batch, kv_heads, seq_len, head_dim]")
        x32 = x.float()
        if not bool(torch.isfinite(x32).all()):
            raise CodecError(f"{self}: cannot quantize NaN or inf; send such layers with identity or fp16")
        absmax = x32.abs().amax(dim=self._reduce, keepdim=True)
        scale = torch.where(absmax > 0, (absmax / E4M3_MAX).clamp(min=MIN_SCALE), torch.zeros_like(absmax))
        divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
        # x / s can exceed 448 by float32 rounding; torch's conversion would saturate too,
        # but clamping first does not depend on that
        q = (x32 / divisor).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        return Codes(q.view(torch.uint8), 8), {"scale": scale}

    def error_bound(self, x: torch.Tensor, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``2^-4·|x|·(1 + 2^-20) + 2^-10·s + 2^-20·|x| + 2^-140`` per element (float64).

        Rounding ``x/s`` to E4M3 moves it by at most half an ulp, ``2^-4`` of its
        magnitude in the normal range and ``2^-10`` (half the subnormal spacing 2^-9)
        below it; scaled back by ``s`` that is ``2^-4·|x| + 2^-10·s``. The float32 division,
        the clamp (the quotient may exceed 448 by an ulp) and the product add a few
        float32 ulps of ``|x|``, and products below float32's normal range an absolute
        2^-149 or so.
        """
        a = x.double().abs()
        s = side["scale"].double()
        return 2.0**-4 * a * (1 + 2.0**-20) + 2.0**-10 * s + 2.0**-20 * a + 2.0**-140

    def decode(self, y: Codes, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(y, Codes) or y.bits != 8 or y.data.dtype != torch.uint8 or y.data.dim() != 4:
            raise DecodeError(f"{self}: expected 8-bit codes [batch, kv_heads, seq_len, head_dim]")
        scale = side_tensor(side, "scale", shape=self._scale_shape(tuple(y.data.shape)), dtypes=(torch.float32,), stage=str(self))
        if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
            raise DecodeError(f"{self}: scale holds negative or non-finite values")
        if bool(((y.data & 0x7F) == 0x7F).any()):
            raise DecodeError(f"{self}: NaN codes (0x7F / 0xFF) in the data")
        return y.data.view(torch.float8_e4m3fn).float() * scale
