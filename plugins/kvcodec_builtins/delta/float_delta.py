"""Delta coding of keys or values along the tokens, in float, before a quantizer.

Neighbouring tokens of a KV cache are correlated, so their differences can have a
smaller range than the tokens themselves — the observation behind delta coding of the KV
cache in CacheGen (Liu et al., 2024, "CacheGen: KV Cache Compression and Streaming for
Fast Large Language Model Serving", SIGCOMM, arXiv:2310.07240), which codes each token
against an anchor token of its group. Arithmetic in ``specs/transforms.md`` §3.

This stage is **open loop**: it differences the original values, and a quantizer after it
adds its error to each difference. With ``mode="anchor"`` a decoded token carries its own
difference's error plus its anchor's (two quantization errors, never more). With
``mode="seq"`` token t is the running sum of t + 1 decoded differences, so the errors of
all of them add up: the error grows with t (as √t for independent errors, up to t times
one error in the worst case). Use ``seq`` before a quantizer only to measure that effect;
``cdelta`` after the quantizer is the closed-loop, lossless alternative.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import torch

from kvcodec.codec import Form, TensorStage
from kvcodec.errors import CodecError, DecodeError

from .reference import DEFAULT_GROUP, anchors, check_group, check_mode


@attrs.frozen
class Delta(TensorStage):
    """FLOAT → FLOAT: each token minus its reference token (anchor or previous token).

    Parameters:
        mode: ``"anchor"`` (default): groups of ``group`` tokens, each coded against the
            group's first token; ``"seq"``: each token against the previous one.
        group: tokens per anchor group (≥ 1, default 16); only for ``mode="anchor"``.

    encode: float ``[B,H,T,D]`` (any float dtype) → float32 ``[B,H,T,D]``: anchors (or
    token 0) unchanged, other tokens ``fl32(x_t − x_ref)``; no side information.
    decode: float ``[B,H,T,D]`` → float32 ``[B,H,T,D]``. Without a quantizer in between
    the result equals the input up to float32 rounding of the differences and sums.

    Raises:
        ValueError: for invalid parameters, at construction.
        CodecError: on encode, for a tensor that is not ``[B,H,T,D]`` float.
        DecodeError: on decode, for data that is not a ``[B,H,T,D]`` float tensor.
    """

    name = "delta"
    family = "transform"
    accepts = Form.FLOAT
    produces = Form.FLOAT

    mode: str = attrs.field(default="anchor", validator=check_mode)
    group: int = attrs.field(default=DEFAULT_GROUP, validator=check_group)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
            raise CodecError(f"{self}: expected a [batch, kv_heads, seq_len, head_dim] float tensor")
        xf = x.float()
        y = xf.clone()
        if self.mode == "anchor":
            a, is_anchor = anchors(xf.shape[2], self.group, xf.device)
            rest = ~is_anchor
            y[:, :, rest] = xf[:, :, rest] - xf[:, :, a[rest]]
        else:
            y[:, :, 1:] = xf[:, :, 1:] - xf[:, :, :-1]
        return y, {}

    def error_bound(self, x: torch.Tensor, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Float rounding only, per element (float64, ``[B,H,T,D]``):

        - anchor: 0 for anchors; ``2^-22 · (|x_t| + |x_a|) + 2^-140`` for the others (one
          float32 rounding of the difference, one of the sum);
        - seq: ``2^-23 · (Σ_{s≤t} |x_s − x_{s−1}| + |x_t|) + (t + 1) · 2^-51 ·
          (|x_0| + Σ_{s≤t} |x_s − x_{s−1}|) + 2^-140`` (each difference rounded to float32,
          the binary64 running sum, the final rounding to float32).
        """
        xd = x.double()
        if self.mode == "anchor":
            a, is_anchor = anchors(xd.shape[2], self.group, xd.device)
            bound = 2.0**-22 * (xd.abs() + xd[:, :, a].abs()) + 2.0**-140
            bound[:, :, is_anchor] = 0.0
            return bound
        steps = torch.zeros_like(xd)
        steps[:, :, 1:] = (xd[:, :, 1:] - xd[:, :, :-1]).abs()
        travel = steps.cumsum(dim=2)
        t = torch.arange(1, xd.shape[2] + 1, dtype=xd.dtype, device=xd.device).view(1, 1, -1, 1)
        return 2.0**-23 * (travel + xd.abs()) + t * 2.0**-51 * (xd[:, :, :1].abs() + travel) + 2.0**-140

    def decode(self, y, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(y, torch.Tensor) or not y.is_floating_point() or y.dim() != 4:
            raise DecodeError(f"{self}: expected a [batch, kv_heads, seq_len, head_dim] float tensor")
        yf = y.float()
        if self.mode == "anchor":
            a, is_anchor = anchors(yf.shape[2], self.group, yf.device)
            x = yf.clone()
            rest = ~is_anchor
            x[:, :, rest] = yf[:, :, rest] + yf[:, :, a[rest]]
            return x
        # running sum accumulated in binary64, rounded once to binary32 (transforms.md §3.2)
        return torch.cumsum(yf.double(), dim=2).float()
