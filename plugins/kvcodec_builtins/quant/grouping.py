"""How quantizers split a ``[batch, kv_heads, seq_len, head_dim]`` tensor into groups
that share one scale (and zero point). Specified in ``specs/quantization.md`` §2.

- ``axis="token"``: statistics over head_dim, one group per token per KV head
  (``group`` > 0 splits head_dim into groups of that many channels; it must divide head_dim).
- ``axis="channel"``: statistics over tokens, one group per channel per KV head
  (``group`` > 0 splits the tokens into runs of that many; the last run may be shorter).
"""

from __future__ import annotations

import math

import attrs
import torch

from kvcodec.errors import CodecError, DecodeError

AXES = ("token", "channel")
FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0**-14


@attrs.frozen
class Grouping:
    """The grouping of one tensor shape; ``stats_shape`` is the shape of scales/zero points."""

    shape: tuple[int, ...]  # [B, H, T, D]
    axis: str
    size: int  # elements per group
    count: int  # groups along the axis

    @classmethod
    def of(cls, shape: tuple[int, ...], axis: str, group: int, error=CodecError) -> "Grouping":
        if len(shape) != 4:
            raise error(f"expected a [batch, kv_heads, seq_len, head_dim] tensor, got shape {tuple(shape)}")
        b, h, t, d = shape
        if axis == "token":
            size = group or d
            if d % size:
                raise error(f"group size {size} does not divide head_dim {d}")
            return cls(tuple(shape), axis, size, d // size)
        # a run longer than the tokens is one run of all of them: same groups and stats, and
        # no padding proportional to an (untrusted, possibly huge) group parameter
        size = max(min(group or t, t), 1)
        return cls(tuple(shape), axis, size, math.ceil(t / size))

    @property
    def stats_shape(self) -> tuple[int, ...]:
        b, h, t, d = self.shape
        return (b, h, t, self.count) if self.axis == "token" else (b, h, d, self.count)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,H,T,D]`` → ``[*stats_shape, size]``; channel groups are padded by repeating
        each channel's last token (which changes no group's min, max or absmax)."""
        b, h, t, d = self.shape
        if self.axis == "token":
            return x.reshape(b, h, t, self.count, self.size)
        xt = x.transpose(-1, -2)
        pad = self.count * self.size - t
        if pad:
            xt = torch.cat([xt, xt[..., -1:].expand(b, h, d, pad)], dim=-1)
        return xt.reshape(b, h, d, self.count, self.size)

    def lengths(self) -> torch.Tensor:
        """Number of real (unpadded) elements in each group along the grouped axis, shape
        ``[count]`` (float32): all ``size`` except a shorter last channel run."""
        n = torch.full((self.count,), float(self.size))
        if self.axis == "channel" and self.count:
            n[-1] = self.shape[2] - (self.count - 1) * self.size
        return n

    def merge(self, g: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`split` (padding dropped)."""
        b, h, t, d = self.shape
        if self.axis == "token":
            return g.reshape(b, h, t, d)
        return g.reshape(b, h, d, self.count * self.size)[..., :t].transpose(-1, -2)


def round_to_side_dtype(value: torch.Tensor, direction: str) -> torch.Tensor:
    """Round float32 ``value`` to the side-information dtype, in ``direction``
    ``"up"``, ``"down"`` or ``"nearest"``: float16 when every result is finite and no
    nonzero magnitude is below FP16's smallest normal (2^-14), else float32 unchanged."""
    v16 = value.to(torch.float16)
    if direction != "nearest":
        target = torch.full_like(v16, math.inf if direction == "up" else -math.inf)
        off = (v16.float() < value) if direction == "up" else (v16.float() > value)
        v16 = torch.where(off, torch.nextafter(v16, target), v16)
    mag = v16.float().abs()
    fits = bool(torch.isfinite(v16).all()) and not bool(((mag > 0) & (mag < FP16_MIN_NORMAL)).any())
    fits = fits and not bool(((value != 0) & (v16 == 0)).any())
    return v16 if fits else value.float()


def finite_stats(side: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
    """Refuse to emit side information a decoder would reject (inf/nan scale or zero point):
    the input holds inf or nan, or a group spans more than float32 can represent."""
    for name, t in side.items():
        if not bool(torch.isfinite(t).all()):
            raise CodecError(
                f"{stage}: cannot quantize: some group's {name} is not finite (the input holds inf or nan,"
                " or a range float32 cannot hold); send such layers with identity or fp16"
            )
    return side


def check_stats(t: torch.Tensor, name: str, shape: tuple[int, ...], stage: str, positive: bool = False) -> torch.Tensor:
    """Validate a decoded scale / zero-point tensor (untrusted) and return it as float32."""
    if t.dtype not in (torch.float16, torch.float32):
        raise DecodeError(f"{stage}: {name} has dtype {t.dtype}, expected float16 or float32")
    if tuple(t.shape) != tuple(shape):
        raise DecodeError(f"{stage}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    t = t.float()
    if not bool(torch.isfinite(t).all()) or (positive and bool((t < 0).any())):
        raise DecodeError(f"{stage}: {name} holds non-finite{' or negative' if positive else ''} values")
    return t
