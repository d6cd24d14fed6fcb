"""A chain: the ordered tensor stages that one layer's keys (or values) go through."""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import torch

from kvcodec.codec import Form, Side, TensorStage
from kvcodec.errors import DecodeError


def check_composition(stages: Sequence[TensorStage]) -> None:
    """Check that each stage accepts what the previous one produces, starting from FLOAT.

    Raises:
        ValueError: naming the first pair of stages that do not fit.
    """
    if not stages:
        raise ValueError("a chain needs at least one stage (use 'identity' to send native precision)")
    form, previous = Form.FLOAT, "the cache"
    for stage in stages:
        if not isinstance(stage, TensorStage):
            raise ValueError(f"{stage.name!r} works on the whole cache and must come first in the pipeline")
        if stage.accepts is not form:
            raise ValueError(
                f"{stage.name!r} accepts {stage.accepts.value} but {previous} gives {form.value}"
            )
        form, previous = stage.produces, repr(stage.name)


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

        Raises:
            DecodeError: if a stage rejects its input or fails on it.
        """
        if len(sides) != len(self.stages):
            raise DecodeError(f"chain {self} has {len(self.stages)} stages but {len(sides)} side-info blocks")
        for stage, side in zip(reversed(self.stages), reversed(sides)):
            try:
                y = stage.decode(y, side)
            except DecodeError:
                raise
            except Exception as exc:  # noqa: BLE001 - untrusted input must only ever raise DecodeError
                raise DecodeError(f"stage {stage} could not decode its input: {type(exc).__name__}: {exc}") from exc
        if not isinstance(y, torch.Tensor) or not y.is_floating_point():
            raise DecodeError(f"chain {self} did not decode to a float tensor")
        return y

