"""Check ``forms``: encode returns what it declares and valid side information."""

from __future__ import annotations

from typing import Any

import torch

from kvcodec import wire
from kvcodec.cache import KVCache
from kvcodec.codec import Codes, Form, Stage, TensorStage

from ..subject import Subject
from ._common import SIDE_DTYPES, _fail, _run_chain, _what


def check_forms(subject: Subject, cache: KVCache) -> None:
    """Every stage's ``encode`` returns data of its declared form and valid side
    information, and does not modify its input:

    - FLOAT: a floating-point tensor of the wire's dtypes; CODES: :class:`Codes` whose
      ``data`` is uint8 (≤ 8 bits) or int32 (more) with every value in ``[0, 2^bits)``;
      BYTES: ``bytes``;
    - side information: a dict of at most 64 tensors of the wire's dtypes, at most 8
      dimensions each, names of 1 … 255 UTF-8 bytes.
    """
    c = "forms"
    for i, layer in enumerate(subject.expected(cache)):
        for kind, x in (("k", layer.keys), ("v", layer.values)):
            steps = _run_chain(c, subject, subject.pipeline.chain_for(i, kind), x)
            for stage, _inp, out, side in steps:
                _check_form(c, subject, stage, out)
                _check_side(c, subject, stage, side)


def _check_form(c: str, subject: Subject, stage: TensorStage, out: Any) -> None:
    form = stage.produces
    if form is Form.FLOAT:
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dtype not in SIDE_DTYPES:
            raise _fail(c, subject, f"{stage}.encode must produce a float tensor (float32/16/64, bfloat16), got {_what(out)}")
    elif form is Form.CODES:
        if not isinstance(out, Codes):
            raise _fail(c, subject, f"{stage}.encode must produce kvcodec.Codes, got {_what(out)}")
        want = Codes.storage_dtype(out.bits)
        if out.data.dtype != want:
            raise _fail(c, subject, f"{stage}: {out.bits}-bit codes must be held as {want}, got {out.data.dtype}")
        _check_code_range(c, subject, stage, out)
    elif form is Form.BYTES:
        if not isinstance(out, bytes):
            raise _fail(c, subject, f"{stage}.encode must produce bytes, got {_what(out)}")


def _check_code_range(c: str, subject: Subject, stage: Stage, codes: Codes) -> None:
    if codes.data.numel() == 0:
        return
    lo, hi = int(codes.data.min()), int(codes.data.max())
    if lo < 0 or hi >= 1 << codes.bits:
        raise _fail(
            c,
            subject,
            f"{stage} reports {codes.bits}-bit codes but produced values {lo} … {hi}: the payload would carry"
            f" {codes.bits} bits per code where {max(hi, 1).bit_length()} are needed",
        )


def _check_side(c: str, subject: Subject, stage: TensorStage, side: Any) -> None:
    if not isinstance(side, dict):
        raise _fail(c, subject, f"{stage}.encode must return its side information as a dict, got {_what(side)}")
    if len(side) > wire.MAX_ARRAYS:
        raise _fail(c, subject, f"{stage} sends {len(side)} side arrays; at most {wire.MAX_ARRAYS}")
    for name, t in side.items():
        if not isinstance(name, str) or not 1 <= len(name.encode()) <= 255:
            raise _fail(c, subject, f"{stage}: side information name {name!r} must be a str of 1 … 255 bytes")
        if not isinstance(t, torch.Tensor) or t.dtype not in SIDE_DTYPES or t.dim() > wire.MAX_NDIM:
            raise _fail(
                c, subject, f"{stage}: side information {name!r} must be a tensor of a wire dtype, ≤ 8 dims; got {_what(t)}"
            )
