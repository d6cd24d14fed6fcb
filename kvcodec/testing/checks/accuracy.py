"""Check ``accuracy``: lossless chains are bit-exact, lossy ones within the declared bound."""

from __future__ import annotations

import torch

from kvcodec import wire
from kvcodec.cache import KVCache

from ..subject import Subject
from ._common import (
    describe_cache,
    NotApplicable,
    same_bits,
    _decode_own,
    _encode_payload,
    _fail,
    _int_view,
    _tensor_stage_chains,
    _what,
)


def accuracy_not_applicable(subject: Subject) -> str | None:
    """Why :func:`check_accuracy` cannot check this pipeline, or ``None`` if it can.

    A chain is checkable when it is lossless, or when its only lossy stage is its first
    (its input is then the cache's tensor, and what follows restores its output exactly)."""
    reasons = []
    for chain in _tensor_stage_chains(subject):
        lossy = [i for i, s in enumerate(chain.stages) if not s.lossless]
        if chain.lossless or lossy == [0]:
            return None
        reasons.append(f"{chain}: lossy stages at positions {lossy}")
    return "no chain has at most one lossy stage, first: " + "; ".join(reasons)


def check_accuracy(subject: Subject, cache: KVCache) -> None:
    """Lossless chains reproduce every element bit for bit; a chain whose one lossy stage
    comes first stays within that stage's ``error_bound(x, side)``, plus half an ulp of
    the cache dtype for the final conversion (``specs/plugins.md`` §4.6).

    Raises:
        NotApplicable: see :func:`accuracy_not_applicable`.
    """
    reason = accuracy_not_applicable(subject)
    if reason:
        raise NotApplicable(reason)
    payload = _encode_payload(subject, cache)
    out = _decode_own("accuracy", subject, wire.dump(payload), cache)
    _compare_accuracy(subject, subject.expected(cache), out, payload)


def _cast_slack(dtype: torch.dtype, magnitude: torch.Tensor) -> torch.Tensor:
    f = torch.finfo(dtype)
    return f.eps / 2 * magnitude + f.smallest_normal * f.eps / 2


def _compare_accuracy(subject: Subject, expected: KVCache, out: KVCache, payload: wire.Payload) -> None:
    c = "accuracy"
    for i, (a, b, enc) in enumerate(zip(expected, out, payload.layers)):
        for what, x, y, block in (("keys", a.keys, b.keys, enc.keys), ("values", a.values, b.values, enc.values)):
            chain = payload.chains[block.chain]
            lossy = [j for j, s in enumerate(chain.stages) if not s.lossless]
            if chain.lossless:
                if not same_bits(x.cpu(), y.cpu()):
                    diff = (_int_view(x.cpu()) != _int_view(y.cpu())).nonzero()
                    idx = tuple(diff[0].tolist())
                    raise _fail(
                        c,
                        subject,
                        f"chain {chain} is declared lossless but layer {i} {what} differs in {len(diff)} elements,"
                        f" first at {idx}: sent {x[idx].item()!r}, got {y[idx].item()!r}",
                    )
                continue
            if lossy != [0]:
                continue
            stage = chain.stages[0]
            try:
                bound = stage.error_bound(x, block.sides[0])
            except Exception as exc:  # noqa: BLE001 - the finding
                raise _fail(c, subject, f"{stage}.error_bound raised {type(exc).__name__}: {exc}") from None
            if bound is None:
                if subject.require_error_bound:
                    raise _fail(c, subject, f"lossy {stage} declares no error bound (error_bound returned None)")
                continue
            if not isinstance(bound, torch.Tensor) or not bound.is_floating_point():
                raise _fail(c, subject, f"{stage}.error_bound must return a float tensor, got {_what(bound)}")
            try:
                bound = torch.broadcast_to(bound.double().cpu(), x.shape)
            except RuntimeError:
                shape = tuple(bound.shape)
                raise _fail(c, subject, f"{stage}.error_bound shape {shape} does not broadcast to {tuple(x.shape)}") from None
            xd, yd = x.double().cpu(), y.double().cpu()
            finite = torch.isfinite(xd)
            if bool((finite & ~(bound >= 0)).any()):
                raise _fail(c, subject, f"{stage}.error_bound is negative or NaN for finite input")
            err = (yd - xd).abs()
            allowed = bound * (1 + 2.0**-20) + _cast_slack(x.dtype, xd.abs() + bound)
            bad = finite & ~(err <= allowed)
            if bool(bad.any()):
                excess = torch.where(bad, err - allowed, torch.zeros_like(err))
                idx = tuple(int(v) for v in torch.nonzero(excess == excess.max())[0])
                raise _fail(
                    c,
                    subject,
                    f"layer {i} {what}: {int(bad.sum())} of {x.numel()} elements exceed the declared error bound;"
                    f" worst at {idx}: sent {xd[idx].item()!r}, decoded {yd[idx].item()!r},"
                    f" error {err[idx].item():.6g} > bound {bound[idx].item():.6g} ({describe_cache(expected)})",
                )
