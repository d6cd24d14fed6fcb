"""Check ``damaged_input``: a stage's own decode, fed damaged data and side information."""

from __future__ import annotations

import math
import random
from typing import Any, Iterable, Mapping

import torch

from kvcodec.cache import KVCache
from kvcodec.codec import Codes, TensorStage
from kvcodec.errors import DecodeError

from ..subject import Subject
from ..timeouts import TimeLimitExceeded
from ._common import NotApplicable, same_bits, _clone, _fail, _run_chain


def _y_mutations(y: Any, rng: random.Random) -> Iterable[tuple[str, Any]]:
    if isinstance(y, (bytes, bytearray)):
        n = len(y)
        cuts = range(n) if n <= 400 else sorted(set(range(64)) | set(rng.sample(range(n), 336)))
        for k in cuts:
            yield f"its bytes cut to {k} of {n}", bytes(y[:k])
        yield "one byte appended", bytes(y) + b"\x00"
        for _ in range(20):
            if n:
                b = bytearray(y)
                b[rng.randrange(n)] ^= rng.randrange(1, 256)
                yield "a byte flipped", bytes(b)
        return
    if isinstance(y, Codes):
        d = y.data
        for label, t in _shape_mutations(d):
            yield f"codes {label}", Codes(t, y.bits)
        for bits in (y.bits - 1, y.bits + 1):
            if 1 <= bits <= 16:
                t = d.to(Codes.storage_dtype(bits)) & ((1 << bits) - 1)
                yield f"{bits}-bit codes instead of {y.bits}", Codes(t, bits)
        if d.numel():
            noisy = d.contiguous().clone().view(-1)
            gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
            idx = torch.randint(0, noisy.numel(), (max(1, noisy.numel() // 10),), generator=gen)
            noisy[idx] = (noisy[idx].long() ^ 1).to(noisy.dtype) & ((1 << y.bits) - 1)
            yield "some codes changed", Codes(noisy.view(d.shape), y.bits)
        return
    if isinstance(y, torch.Tensor):
        for label, t in _shape_mutations(y):
            yield f"data {label}", t
        yield "data as int32", y.to(torch.int32)
        yield "data as float64", y.double()


def _shape_mutations(t: torch.Tensor) -> Iterable[tuple[str, torch.Tensor]]:
    if t.dim() >= 1 and t.shape[-1] > 1:
        yield "with the last column dropped", t[..., :-1].contiguous()
    if t.dim() >= 2 and t.shape[-2] > 1:
        yield "with the last row dropped", t[..., :-1, :].contiguous()
    if t.dim() != 1:
        yield "flattened", t.reshape(-1).clone()
    yield "empty", t.reshape(-1)[:0].clone()
    if t.dim() < 8:
        yield "with an extra dimension", t.unsqueeze(0).clone()


def _side_mutations(side: Mapping[str, torch.Tensor]) -> Iterable[tuple[str, dict, str]]:
    """(label, damaged side, rule): rule ``"same"`` — decode must raise DecodeError or
    return exactly the undamaged result; ``"finite"`` — DecodeError or a finite result;
    ``"none"`` — DecodeError or any result, but no other exception."""
    names = list(side)
    for name in names:
        t = side[name]
        rest = {k: v for k, v in side.items() if k != name}
        yield f"side {name!r} missing", rest, "same"
        for label, bad in _shape_mutations(t):
            yield f"side {name!r} {label}", {**rest, name: bad}, "same"
        for dtype in (torch.float64, torch.float16, torch.int64, torch.int32, torch.uint8, torch.bool):
            if dtype == t.dtype:
                continue
            moved = t.to(dtype)
            exact = moved.numel() == 0 or bool(torch.equal(moved.to(t.dtype), t) and torch.equal(moved.double(), t.double()))
            yield f"side {name!r} as {dtype}", {**rest, name: moved}, "same" if exact else "none"
        if t.numel():
            if t.is_floating_point():
                for v in (math.nan, math.inf, -math.inf):
                    bad = t.contiguous().clone()
                    bad.view(-1)[0] = v
                    yield f"side {name!r} holding {v}", {**rest, name: bad}, "finite"
                for v in (-1.0, torch.finfo(t.dtype).max, 0.0):
                    yield f"side {name!r} all {v}", {**rest, name: torch.full_like(t, v)}, "none"
            elif t.dtype != torch.bool:
                info = torch.iinfo(t.dtype)
                for v in (-1, 0, info.max, 2**40 if t.dtype == torch.int64 else info.max):
                    if info.min <= v <= info.max:
                        yield f"side {name!r} all {v}", {**rest, name: torch.full_like(t, v)}, "none"
    yield "an unexpected side array", {**side, "zz_unexpected": torch.ones(3)}, "same"


def check_damaged_input(subject: Subject, cache: KVCache, seed: int = 0) -> int:
    """Feed the stage's own ``decode`` damaged input, as a corrupted or malicious payload
    could (``specs/plugins.md`` §4.3: ``y`` and ``side`` are untrusted):

    - decoding its real output twice gives identical results and leaves ``y`` and
      ``side`` unchanged;
    - ``y`` cut short, reshaped, emptied, re-typed, codes of another width, flipped bytes:
      ``DecodeError`` or a result, never another exception, never a hang;
    - a side array missing, reshaped, re-typed or unexpected: ``DecodeError``, or exactly
      the undamaged result (the array was not needed, or the change kept its values);
    - a side array holding NaN or ±inf: ``DecodeError`` or a finite result;
    - a side array set to −1, 0 or huge values: ``DecodeError`` or a result.

    Returns how many damaged inputs were tried.

    Raises:
        NotApplicable: for a cache stage (it has no decode).
    """
    c = "damaged_input"
    if not isinstance(subject.stage, TensorStage):
        raise NotApplicable(f"{subject.codec} is a cache stage: nothing is decoded")
    rng = random.Random(seed)
    tried = 0
    found = False
    expected = subject.expected(cache)
    for i, layer in enumerate(expected):
        for kind, x in (("k", layer.keys), ("v", layer.values)):
            chain = subject.pipeline.chain_for(i, kind)
            steps = [s for s in _run_chain(c, subject, chain, x) if s[0] == subject.stage]
            if not steps:
                continue
            found = True
            stage, _inp, y, side = steps[0]
            tried += _damage_one(subject, stage, y, side, rng)
        if found:
            break
    if not found:
        raise NotApplicable(f"{subject.codec} is not in a chain of this pipeline")
    return tried


def _call_decode(subject: Subject, stage: TensorStage, y: Any, side: Mapping[str, torch.Tensor], label: str):
    """(result, None) or (None, DecodeError); anything else is a violation."""
    c = "damaged_input"
    try:
        return subject.timed(lambda: stage.decode(y, side), f"{stage}.decode with {label}"), None
    except DecodeError as exc:
        return None, exc
    except TimeLimitExceeded as exc:
        raise _fail(c, subject, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the finding
        raise _fail(
            c, subject, f"{stage}.decode with {label} raised {type(exc).__name__}: {exc}; it must raise DecodeError"
        ) from None


def _finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return bool(torch.isfinite(value).all())
    return True


def _damage_one(subject: Subject, stage: TensorStage, y: Any, side: dict, rng: random.Random) -> int:
    c = "damaged_input"
    y0, side0 = _clone(y), _clone(side)
    ref, err = _call_decode(subject, stage, y0, side0, "its own output")
    if err is not None:
        raise _fail(c, subject, f"{stage}.decode rejects its own encoder's output: {err}")
    if not same_bits(y0, y) or any(not same_bits(side0[k], side[k]) for k in side) or set(side0) != set(side):
        raise _fail(c, subject, f"{stage}.decode modified its input (y or side information)")
    again, _ = _call_decode(subject, stage, _clone(y), _clone(side), "its own output, again")
    if not same_bits(ref, again):
        raise _fail(c, subject, f"{stage}.decode gives different results for the same input")
    tried = 0
    for label, bad_y in _y_mutations(y, rng):
        _call_decode(subject, stage, bad_y, _clone(side), label)
        tried += 1
    ref_finite = _finite(ref)
    for label, bad_side, rule in _side_mutations(side):
        out, err = _call_decode(subject, stage, _clone(y), bad_side, label)
        tried += 1
        if err is not None:
            continue
        if rule == "same" and not same_bits(out, ref):
            raise _fail(
                c,
                subject,
                f"{stage}.decode accepted {label} and returned a different result: decode must check every"
                " side array it uses (presence, dtype, exact shape, value range) and raise DecodeError",
            )
        if rule == "finite" and ref_finite and not _finite(out):
            raise _fail(
                c,
                subject,
                f"{stage}.decode accepted {label} and returned NaN or inf: check side arrays for finite values"
                " and raise DecodeError",
            )
    return tried
