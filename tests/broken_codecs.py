"""Deliberately broken codecs: each plants one fault the contract suite
(:mod:`kvcodec.testing`) must catch. ``tests/test_contract_faults.py`` runs the suite on
each and asserts which check fails.

Every class here is otherwise a working codec (it round-trips realistic caches), so that
the fault, and only the fault, is what the suite has to find. They are registered on the
spot (``kvcodec.testing.registry_with``), never installed.

Part 1 was planted together with the suite; part 2 was written afterwards, by thinking
of mistakes plugin authors make rather than of what the suite checks (see
``FAULTS_PLANTED_LATER`` and the test module for what the suite caught).
"""

from __future__ import annotations

import hashlib
import struct

import attrs
import numpy as np
import torch

from kvcodec import CodecError, Codes, DecodeError, Form, TensorStage
from kvcodec.codec import side_tensor

_DTYPE_CODES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}
_CODE_DTYPES = {v: k for k, v in _DTYPE_CODES.items()}


def _finite(x: torch.Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise CodecError("cannot quantize NaN or inf")


class _AbsmaxQuantizer(TensorStage):
    """Shared working part: symmetric per-token quantization with a float32 scale."""

    accepts = Form.FLOAT
    produces = Form.CODES
    family = "quantizer"
    levels = 127  # codes 0 … 2·levels

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        _finite(x)
        return x.float().abs().amax(-1, keepdim=True) / self.levels

    def encode(self, x):
        scale = self._scale(x)
        q = torch.round(x.float() / torch.where(scale > 0, scale, 1.0)) + self.levels
        return Codes(q.to(torch.uint8), 8), {"scale": scale}

    def decode(self, y, side):
        if not isinstance(y, Codes) or y.bits != 8 or y.data.dim() != 4:
            raise DecodeError(f"{self.name}: expected 8-bit codes")
        b, h, t, d = y.data.shape
        scale = side_tensor(side, "scale", shape=(b, h, t, 1), dtypes=(torch.float32,), stage=self.name)
        if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
            raise DecodeError(f"{self.name}: bad scale")
        return (y.data.float() - self.levels) * scale

    def error_bound(self, x, side):
        return side["scale"].double() / 2 + 2.0**-20 * x.double().abs()


# ============================================================================ part 1
@attrs.frozen
class LyingWidth(_AbsmaxQuantizer):
    """FAULT (byte count that lies): a 4-bit asymmetric quantizer with an off-by-one top
    code: it divides the range into 2^4 = 16 steps, so its codes run 0 … 16, but it
    reports 4-bit codes. The payload counts 4 bits per element where 5 are needed."""

    name = "broken_lying_width"

    def encode(self, x):
        _finite(x)
        x32 = x.float()
        lo = x32.amin(-1, keepdim=True)
        scale = (x32.amax(-1, keepdim=True) - lo) / 16  # should be / 15
        q = torch.round((x32 - lo) / torch.where(scale > 0, scale, 1.0))
        return Codes(q.to(torch.uint8), 4), {"scale": scale, "zero": lo}

    def decode(self, y, side):
        if not isinstance(y, Codes) or y.bits != 4 or y.data.dim() != 4:
            raise DecodeError("expected 4-bit codes")
        b, h, t, d = y.data.shape
        scale = side_tensor(side, "scale", shape=(b, h, t, 1), dtypes=(torch.float32,))
        zero = side_tensor(side, "zero", shape=(b, h, t, 1), dtypes=(torch.float32,))
        if not bool(torch.isfinite(scale).all() and torch.isfinite(zero).all()) or bool((scale < 0).any()):
            raise DecodeError("bad scale or zero point")
        return y.data.float() * scale + zero


_STASH: dict[str, torch.Tensor] = {}


@attrs.frozen
class HiddenSideChannel(TensorStage):
    """FAULT (byte count that lies): sends a 32-byte digest of the tensor and keeps the
    tensor itself in a module-level dict, where its decode finds it. Lossless and
    deterministic in one process — and the payload is a fraction of what the receiver
    really needs."""

    name = "broken_hidden_state"
    family = "cast"
    accepts = Form.FLOAT
    produces = Form.BYTES
    lossless = True

    def encode(self, x):
        digest = hashlib.sha256(x.contiguous().view(torch.uint8).numpy().tobytes()).digest()
        _STASH[digest.hex()] = x.clone()
        return digest, {}

    def decode(self, y, side):
        x = _STASH.get(bytes(y).hex())
        if x is None:
            raise DecodeError("unknown tensor")
        return x.clone()


@attrs.frozen
class ChangedShape(TensorStage):
    """FAULT (changed shape): folds the KV heads into the token axis to send one
    ``[B, 1, H·T, D]`` float16 tensor and never unfolds it. Only MQA (one KV head)
    survives."""

    name = "broken_changed_shape"
    family = "cast"
    accepts = Form.FLOAT
    produces = Form.FLOAT

    def encode(self, x):
        b, h, t, d = x.shape
        return x.reshape(b, 1, h * t, d).to(torch.float16), {}

    def decode(self, y, side):
        if not isinstance(y, torch.Tensor) or not y.is_floating_point():
            raise DecodeError("expected a float tensor")
        return y

    def error_bound(self, x, side):
        return 2.0**-11 * x.double().abs() + 2.0**-25


@attrs.frozen
class CrashOnTruncation(TensorStage):
    """FAULT (crash other than DecodeError on truncated input): serializes the tensor
    into a self-describing byte string (dtype code, shape, raw elements) and parses it
    back with ``struct`` and numpy without checking lengths: a short string raises
    ``struct.error`` or ``ValueError``."""

    name = "broken_truncation_crash"
    family = "cast"
    accepts = Form.FLOAT
    produces = Form.BYTES
    lossless = True

    def encode(self, x):
        if x.dtype not in _DTYPE_CODES:
            raise CodecError("float32, float16 or bfloat16 only")
        head = struct.pack("<B4I", _DTYPE_CODES[x.dtype], *x.shape)
        return head + x.contiguous().view(torch.uint8).numpy().tobytes(), {}

    def decode(self, y, side):
        code, *shape = struct.unpack_from("<B4I", y)
        dtype = _CODE_DTYPES[code]
        raw = np.frombuffer(y, dtype=np.uint8, offset=17).copy()
        return torch.from_numpy(raw).view(dtype).reshape(shape)


@attrs.frozen
class NonDeterministic(_AbsmaxQuantizer):
    """FAULT (non-determinism): stochastic rounding — unbiased on average, a real
    technique — drawn from torch's global random generator, so the same cache never
    gives the same bytes twice. (Its error bound, a full step, holds.)"""

    name = "broken_nondeterministic"

    def encode(self, x):
        scale = self._scale(x)
        noise = torch.rand(x.shape)
        q = torch.floor(x.float() / torch.where(scale > 0, scale, 1.0) + noise).clamp(-127, 127) + 127
        return Codes(q.to(torch.uint8), 8), {"scale": scale}

    def error_bound(self, x, side):
        return side["scale"].double() + 2.0**-20 * x.double().abs()


#: class → the check that must catch it
FAULTS = {
    LyingWidth: "byte_count",
    HiddenSideChannel: "self_contained",
    ChangedShape: "round_trip",
    CrashOnTruncation: "damaged_input",
    NonDeterministic: "deterministic",
}


# ============================================================================ part 2
# Planted after the suite was written, from mistakes plugin authors make — not from the
# list of checks. FAULTS_PLANTED_LATER records, for each, the check that catches it and
# whether the suite caught it as first written (see test_contract_faults.py).


@attrs.frozen
class ContiguousOnly(TensorStage):
    """FAULT: "byte shuffle" (the bytes of every element regrouped into planes, as blosc
    does before compression) through ``x.view(-1)``, which fails on a non-contiguous
    tensor — a transposed or sliced cache, as model code often hands over."""

    name = "broken_contiguous_only"
    family = "transform"
    accepts = Form.FLOAT
    produces = Form.BYTES
    lossless = True

    def encode(self, x):
        if x.dtype not in _DTYPE_CODES:
            raise CodecError("float32, float16 or bfloat16 only")
        flat = x.view(-1)  # the bug: needs x.contiguous()
        planes = flat.view(torch.uint8).reshape(-1, x.element_size()).t().contiguous()
        return struct.pack("<B4I", _DTYPE_CODES[x.dtype], *x.shape) + planes.numpy().tobytes(), {}

    def decode(self, y, side):
        if len(y) < 17:
            raise DecodeError("truncated header")
        code, *shape = struct.unpack_from("<B4I", y)
        if code not in _CODE_DTYPES:
            raise DecodeError("bad dtype code")
        dtype = _CODE_DTYPES[code]
        size = torch.empty((), dtype=dtype).element_size()
        count = int(np.prod(shape, dtype=np.int64))
        if len(y) - 17 != count * size:
            raise DecodeError("length does not match the shape")
        planes = torch.frombuffer(bytearray(y[17:]), dtype=torch.uint8).reshape(size, count)
        return planes.t().contiguous().view(dtype).reshape(shape)


@attrs.frozen
class NarrowIndex(TensorStage):
    """FAULT: sorts each head's tokens by norm (neighbours then differ less, which helps a
    later delta or entropy stage) and sends the permutation as uint8 — fine up to 256
    tokens, silently wrong beyond, where real caches live."""

    name = "broken_narrow_index"
    family = "transform"
    accepts = Form.FLOAT
    produces = Form.FLOAT
    lossless = True

    def encode(self, x):
        order = x.float().norm(dim=-1).argsort(dim=-1, stable=True)  # [B, H, T]
        sorted_x = torch.gather(x, 2, order.unsqueeze(-1).expand_as(x))
        return sorted_x, {"order": order.to(torch.uint8)}  # the bug: uint8 indices

    def decode(self, y, side):
        if not isinstance(y, torch.Tensor) or not y.is_floating_point() or y.dim() != 4:
            raise DecodeError("expected a float tensor [B, H, T, D]")
        order = side_tensor(side, "order", shape=tuple(y.shape[:3]), dtypes=(torch.uint8,)).long()
        if bool((order >= y.shape[2]).any()):
            raise DecodeError("order out of range")
        out = torch.zeros_like(y)
        out.scatter_(2, order.unsqueeze(-1).expand_as(y), y)
        return out


@attrs.frozen
class Pow2Hadamard(TensorStage):
    """FAULT: rotates each token by a normalized Walsh–Hadamard matrix (as QuaRot does
    before quantizing, to spread outlier channels) and sends the rotated float32 values.
    The fast transform pairs channels ``j`` and ``j + h`` for ``h = 1, 2, 4, …`` and is
    orthogonal only when head_dim is a power of two; for 80, 96 or 112 (real models) the
    leftover channels are simply not mixed, and it scales them anyway."""

    name = "broken_pow2_hadamard"
    family = "transform"
    accepts = Form.FLOAT
    produces = Form.FLOAT

    @staticmethod
    def _fwht(x: torch.Tensor) -> torch.Tensor:
        x = x.double().clone()
        d = x.shape[-1]
        h = 1
        while 2 * h <= d:
            for start in range(0, d - 2 * h + 1, 2 * h):
                a = x[..., start : start + h].clone()
                b = x[..., start + h : start + 2 * h].clone()
                x[..., start : start + h] = a + b
                x[..., start + h : start + 2 * h] = a - b
            h *= 2
        return x / d**0.5  # the bug: the normalization of a power-of-two transform

    def encode(self, x):
        return self._fwht(x).float(), {}

    def decode(self, y, side):
        if not isinstance(y, torch.Tensor) or not y.is_floating_point() or y.dim() != 4:
            raise DecodeError("expected a float tensor [B, H, T, D]")
        return self._fwht(y).float()  # a normalized Hadamard matrix is its own inverse

    def error_bound(self, x, side):
        # float32 rounding of an orthogonal transform and of its inverse
        return 2.0**-18 * x.double().abs().amax(-1, keepdim=True) * x.shape[-1] ** 0.5 + 2.0**-140


@attrs.frozen
class SilentDowncast(TensorStage):
    """FAULT: "bfloat16 is what models use anyway": sends every cache as bfloat16 and
    declares itself lossless — true for bfloat16 caches only."""

    name = "broken_silent_downcast"
    family = "cast"
    accepts = Form.FLOAT
    produces = Form.FLOAT
    lossless = True

    def encode(self, x):
        return x.to(torch.bfloat16), {}

    def decode(self, y, side):
        if not isinstance(y, torch.Tensor) or not y.is_floating_point():
            raise DecodeError("expected a float tensor")
        return y


@attrs.frozen
class UnvalidatedBits(_AbsmaxQuantizer):
    """FAULT: a symmetric quantizer whose ``bits`` parameter has no validator: 1 bit
    divides by zero levels, 9 or more overflow the uint8 codes it always emits."""

    name = "broken_unvalidated_bits"
    bits: int = 8

    @property
    def levels(self) -> int:  # type: ignore[override]
        return 2 ** (self.bits - 1) - 1

    def encode(self, x):
        _finite(x)
        scale = x.float().abs().amax(-1, keepdim=True) / self.levels
        q = torch.round(x.float() / torch.where(scale > 0, scale, 1.0)) + self.levels
        return Codes(q.to(torch.uint8), self.bits), {"scale": scale}

    def decode(self, y, side):
        if not isinstance(y, Codes) or y.bits != self.bits or y.data.dim() != 4:
            raise DecodeError("unexpected codes")
        return super().decode(Codes(y.data, 8), side)


@attrs.frozen
class InPlaceDecode(TensorStage):
    """FAULT: per-token scaling to unit range, sent as float16; decode rescales the
    received tensor in place (``mul_``), modifying its input."""

    name = "broken_in_place_decode"
    family = "cast"
    accepts = Form.FLOAT
    produces = Form.FLOAT

    def encode(self, x):
        _finite(x)
        scale = x.float().abs().amax(-1, keepdim=True).clamp(min=2.0**-100)
        return (x.float() / scale).to(torch.float16), {"scale": scale}

    def decode(self, y, side):
        if not isinstance(y, torch.Tensor) or not y.is_floating_point() or y.dim() != 4:
            raise DecodeError("expected a float tensor")
        scale = side_tensor(side, "scale", shape=(*y.shape[:3], 1), dtypes=(torch.float32,))
        if not bool(torch.isfinite(scale).all()):
            raise DecodeError("bad scale")
        return y.mul_(scale)  # the bug; also float16 × float32 → float16

    def error_bound(self, x, side):
        s = side["scale"].double()
        return 2.0**-11 * x.double().abs() * 2 + 2.0**-24 * s + 2.0**-10 * x.double().abs()


@attrs.frozen
class ZeroStrideHang(TensorStage):
    """FAULT: sends every ``stride``-th token exactly and the rest as float16, with the
    stride in the side information; decode walks the tokens ``t += stride`` and never
    ends when a damaged payload says the stride is 0."""

    name = "broken_zero_stride"
    family = "cast"
    accepts = Form.FLOAT
    produces = Form.FLOAT

    stride: int = attrs.field(default=4, validator=[attrs.validators.ge(1), attrs.validators.le(4096)])

    def encode(self, x):
        x32 = x.float()
        out = x32.to(torch.float16).float()
        out[:, :, :: self.stride] = x32[:, :, :: self.stride]
        return out, {"stride": torch.tensor([self.stride], dtype=torch.int64), "anchors": x32[:, :, :: self.stride].clone()}

    def decode(self, y, side):
        if not isinstance(y, torch.Tensor) or not y.is_floating_point() or y.dim() != 4:
            raise DecodeError("expected a float tensor")
        stride = int(side_tensor(side, "stride", shape=(1,), dtypes=(torch.int64,))[0])
        anchors = side_tensor(side, "anchors", dtypes=(torch.float32,))
        if anchors.dim() != 4 or anchors.shape[:2] != y.shape[:2] or anchors.shape[3] != y.shape[3]:
            raise DecodeError("anchors do not fit the data")
        out = y.float().clone()
        t, k = 0, 0
        while t < y.shape[2]:  # the bug: stride 0 never advances
            if k < anchors.shape[2]:
                out[:, :, t] = anchors[:, :, k]
            t += stride
            k += 1
        return out

    def error_bound(self, x, side):
        return 2.0**-11 * x.double().abs() + 2.0**-25


#: class → the check that must catch it. The first three got past the suite as first
#: written — its caches were all contiguous, at most 40 tokens long and of power-of-two
#: head dims — and led to non-contiguous layers, a 300-token cache and head dims 12 and
#: 80 (strategies) / 12 (fixed caches) being added. The other four were caught at once.
FAULTS_PLANTED_LATER = {
    ContiguousOnly: "round_trip",
    NarrowIndex: "accuracy",
    Pow2Hadamard: "accuracy",
    SilentDowncast: "accuracy",
    UnvalidatedBits: "parameters",
    InPlaceDecode: "damaged_input",
    ZeroStrideHang: "damaged_input",
}
#: the faults of part 2 that the suite as first written missed
MISSED_AT_FIRST = (ContiguousOnly, NarrowIndex, Pow2Hadamard)
