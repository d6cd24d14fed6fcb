"""A chain: the ordered tensor stages that one layer's keys (or values) go through."""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import torch

from kvcodec.codec import Codes, Form, Side, TensorStage
from kvcodec.errors import DecodeError


def check_composition(stages: Sequence[TensorStage]) -> None:
    """Check that each stage accepts what the previous one produces, starting from FLOAT.

    The forms must follow ``FLOAT → (FLOAT → FLOAT)* → [FLOAT → CODES → (CODES → CODES)*]
    → [… → BYTES → (BYTES → BYTES)*]`` (``specs/spec-grammar.md`` §6).

    Raises:
        ValueError: one line naming the first pair of stages that do not fit, the form
            each side has, and what to do, e.g. ``'pca:rank=16' accepts float but 'int4'
            before it gives codes; float stages (identity, fp16, delta, pca) go before the
            quantizer``.
    """
    if not stages:
        raise ValueError("a chain needs at least one stage (use 'identity' to send native precision)")
    form, previous = Form.FLOAT, "the chain's input (a layer's keys or values)"
    for stage in stages:
        if not isinstance(stage, TensorStage):
            raise ValueError(f"{stage.name!r} works on the whole cache and must come first in the pipeline")
        if stage.accepts is not form:
            given = "is" if previous.startswith("the chain") else "before it gives"
            raise ValueError(
                f"{stage.describe()!r} accepts {stage.accepts.value} but {previous} {given} {form.value}"
                f"; {_hint(stage.accepts, form)}"
            )
        form, previous = stage.produces, repr(stage.describe())


def _hint(accepts: Form, given: Form) -> str:
    """What to do when a stage accepting ``accepts`` follows one that produces ``given``."""
    if given is Form.BYTES:
        return "only a bytes → bytes stage may follow a stage that produces bytes (ans, zstd end a chain)"
    if accepts is Form.FLOAT:
        return "float stages (identity, fp16, delta, pca) go before the quantizer"
    if accepts is Form.CODES:
        return "put a quantizer (e.g. int4) before it"
    if accepts is Form.BYTES:
        return "put a stage that produces bytes (e.g. ans, zstd) before it"
    return "cache stages (token selectors) go first in the pipeline"


def _validated(_inst, _attr, stages) -> None:
    check_composition(stages)


@attrs.frozen
class Chain:
    """An ordered tuple of :class:`TensorStage`, FLOAT → … → FLOAT, CODES or BYTES.

    Raises:
        ValueError: at construction, if the stages do not compose.
    """

    stages: tuple[TensorStage, ...] = attrs.field(converter=tuple, validator=_validated)

    @property
    def output(self) -> Form:
        return self.stages[-1].produces

    @property
    def lossless(self) -> bool:
        return all(s.lossless for s in self.stages)

    def describe(self) -> str:
        return "+".join(s.describe() for s in self.stages)

    def __str__(self) -> str:
        return self.describe()

    def encode(self, x: torch.Tensor) -> tuple[Any, tuple[Side, ...]]:
        """Run every stage's encode; return the final output and each stage's side info."""
        sides = []
        for stage in self.stages:
            x, side = stage.encode(x)
            sides.append(side)
        return x, tuple(sides)

    def decode(self, y: Any, sides: Sequence[Side]) -> torch.Tensor:
        """Run every stage's decode in reverse order.

        The chain decodes on one device: that of ``y`` when it is a tensor or codes, else
        that of the side information. A stage whose output lands elsewhere (entropy
        decoders work on the host) has it moved there before the next stage.

        Raises:
            DecodeError: if a stage rejects its input or fails on it.
        """
        if len(sides) != len(self.stages):
            raise DecodeError(f"chain {self} has {len(self.stages)} stages but {len(sides)} side-info blocks")
        device = _device_of(y, sides)
        for stage, side in zip(reversed(self.stages), reversed(sides)):
            try:
                y = stage.decode(_to(y, device), side)
            except DecodeError:
                raise
            except Exception as exc:  # noqa: BLE001 - untrusted input must only ever raise DecodeError
                raise DecodeError(f"stage {stage} could not decode its input: {type(exc).__name__}: {exc}") from exc
        if not isinstance(y, torch.Tensor) or not y.is_floating_point():
            raise DecodeError(f"chain {self} did not decode to a float tensor")
        return _to(y, device)


def _device_of(y: Any, sides: Sequence[Side]) -> torch.device | None:
    """Where a chain decodes: the device of its final data, else of its side information
    (a BYTES payload has no device; the caller moves the side information where it wants
    the result)."""
    if isinstance(y, torch.Tensor):
        return y.device
    if isinstance(y, Codes):
        return y.data.device
    return next((t.device for side in sides for t in side.values()), None)


def _to(y: Any, device: torch.device | None) -> Any:
    """``y`` on ``device``: stages that decode bytes on the host (entropy coders) hand
    their output to the next stage on the device its side information lives on."""
    if device is None:
        return y
    if isinstance(y, torch.Tensor) and y.device != device:
        return y.to(device)
    if isinstance(y, Codes) and y.data.device != device:
        return Codes(y.data.to(device), y.bits)
    return y

