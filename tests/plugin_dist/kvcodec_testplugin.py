"""kvcodec-testplugin: a minimal third-party kvcodec plugin, installed by the test suite.

It registers one codec, ``negate``: a lossless FLOAT → FLOAT stage that multiplies keys or
values by −1 (exact in every IEEE float dtype, so ``decode(encode(x)) == x`` bit for bit).
Useful only to prove that an entry-point plugin is found, named with its distribution,
usable from a spec string (``negate+int8``) and sent over the wire by name.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import torch

from kvcodec import DecodeError, Form, TensorStage, hookimpl

__version__ = "0.1.0"


@attrs.frozen
class Negate(TensorStage):
    """``x ↦ −x``; no parameters, no side information."""

    name = "negate"
    family = "transform"
    accepts = Form.FLOAT
    produces = Form.FLOAT
    lossless = True

    def encode(self, x: torch.Tensor):
        return -x, {}

    def decode(self, y, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(y, torch.Tensor) or not y.is_floating_point():
            raise DecodeError("negate: expected a float tensor")
        if side:
            raise DecodeError(f"negate: unexpected side information {sorted(side)}")
        return -y


@hookimpl
def register_codecs(register):
    register(Negate)
