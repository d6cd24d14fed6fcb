"""What every check shares: the exceptions, the helpers that encode, decode and compare."""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping

import torch

from kvcodec import wire
from kvcodec.cache import KVCache
from kvcodec.chain import Chain
from kvcodec.codec import Codes, TensorStage
from kvcodec.errors import CodecError, DecodeError

from ..subject import Subject
from ..timeouts import TimeLimitExceeded


NAME_RE = re.compile(r"[a-z_][a-z0-9_]*\Z")
SIDE_DTYPES = tuple(wire.DTYPE_CODES)


class ContractViolation(AssertionError):
    """A codec broke a clause of the contract. ``check`` names the clause; the message
    says what was expected and what happened."""

    def __init__(self, check: str, message: str):
        super().__init__(f"[{check}] {message}")
        self.check = check


class NotApplicable(Exception):
    """A clause does not apply to this codec or pipeline (the message says why)."""


class Unencodable(Exception):
    """The codec refused a test cache with ``CodecError`` (allowed: some geometries do not
    suit some codecs; a contract run fails if it refuses every cache)."""


def _fail(check: str, subject: Subject, message: str) -> ContractViolation:
    return ContractViolation(check, f"{subject.codec} in {subject.spec!r}: {message}")


def describe_cache(cache: KVCache) -> str:
    """One line: layers, batch, heads, dtype, sequence lengths, head dims, layer kinds."""
    kinds = []
    for layer in cache:
        if layer.positions.dim() == 2:
            kinds.append("per-head positions")
        elif not layer.has_contiguous_positions:
            kinds.append("selected")
        else:
            kinds.append("sliding" if layer.sliding_window else "full")
    return (
        f"{cache.num_layers} layers, batch {cache.batch_size}, {cache[0].kv_heads} kv heads, {str(cache.dtype)[6:]},"
        f" seq {[l.seq_len for l in cache]}, head_dim {cache[0].head_dim}/{cache[0].values.shape[-1]},"
        f" {'/'.join(dict.fromkeys(kinds))}, on {cache.device}"
    )


def _encode(subject: Subject, cache: KVCache, pipeline=None) -> bytes:
    try:
        return subject.encode(cache, pipeline)
    except CodecError as exc:
        raise Unencodable(f"{subject.spec!r} refused {describe_cache(cache)}: {exc}") from None


def _encode_payload(subject: Subject, cache: KVCache, pipeline=None) -> wire.Payload:
    try:
        return subject.encode_payload(cache, pipeline)
    except CodecError as exc:
        raise Unencodable(f"{subject.spec!r} refused {describe_cache(cache)}: {exc}") from None


def _decode_own(check: str, subject: Subject, data: bytes, cache: KVCache, device=None) -> KVCache:
    try:
        return subject.decode(data, device)
    except DecodeError as exc:
        raise _fail(check, subject, f"cannot decode its own payload of {describe_cache(cache)}: {exc}") from None


def _int_view(t: torch.Tensor) -> torch.Tensor:
    """The bits of ``t`` as an integer tensor of the same width (NaN payloads and the sign
    of zero included)."""
    if not t.is_floating_point():
        return t
    return t.contiguous().view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[t.element_size()])


def same_bits(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of two tensors (dtype and shape too), two :class:`Codes`, or bytes."""
    if isinstance(a, Codes) or isinstance(b, Codes):
        return isinstance(a, Codes) and isinstance(b, Codes) and a.bits == b.bits and same_bits(a.data, b.data)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        return bool(torch.equal(_int_view(a.detach().cpu()), _int_view(b.detach().cpu())))
    if isinstance(a, (bytes, bytearray, memoryview)) and isinstance(b, (bytes, bytearray, memoryview)):
        return bytes(a) == bytes(b)
    return False


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, Codes):
        return Codes(value.data.clone(), value.bits)
    if isinstance(value, Mapping):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return copy.deepcopy(value)


def _snapshot(cache: KVCache) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(l.keys.clone(), l.values.clone(), l.positions.clone()) for l in cache]


def _unchanged(cache: KVCache, snap) -> bool:
    return all(
        same_bits(l.keys, k) and same_bits(l.values, v) and same_bits(l.positions, p) for l, (k, v, p) in zip(cache, snap)
    )


def _tensor_stage_chains(subject: Subject) -> list[Chain]:
    chains: list[Chain] = []
    for rule in subject.pipeline.rules:
        if rule.chain not in chains:
            chains.append(rule.chain)
    return chains


def _run_chain(check: str, subject: Subject, chain: Chain, x: torch.Tensor) -> list[tuple[TensorStage, Any, Any, dict]]:
    """Encode ``x`` stage by stage: ``[(stage, its input, its output, its side), …]``."""
    steps = []
    data: Any = x
    for stage in chain.stages:
        before = _clone(data)
        try:
            result = subject.timed(lambda: stage.encode(data), f"{stage}.encode")
        except CodecError as exc:
            raise Unencodable(f"{stage} refused its input: {exc}") from None
        except TimeLimitExceeded as exc:
            raise _fail(check, subject, str(exc)) from None
        if not same_bits(before, data):
            raise _fail(check, subject, f"{stage}.encode modified its input")
        if not (isinstance(result, tuple) and len(result) == 2):
            raise _fail(check, subject, f"{stage}.encode must return (output, side information), got {_what(result)}")
        out, side = result
        steps.append((stage, data, out, side))
        data = out
    return steps


def _what(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
