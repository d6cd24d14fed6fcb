"""Jitter: a random extra delay added to each packet's propagation.

A jitter model is a frozen description; :meth:`Jitter.delays` turns it into an endless
iterator of extra delays in seconds (≥ 0), one per packet that is not lost, drawn from a
seeded :class:`numpy.random.Generator` in blocks. The link's ``latency_s`` stays the
*minimum* one-way delay: jitter only adds to it.

Whether packets may overtake one another is decided by the path, not here
(``Channel.reorder``): by default a path is FIFO, so a packet whose drawn delay would
make it arrive before its predecessor arrives together with it instead (arrival =
``max(own arrival, previous arrival)``, as on a single physical path or a FIFO router).
With reordering allowed, each packet arrives at its own drawn time.

    >>> UniformJitter(0.002).mean_s
    0.001
"""

from __future__ import annotations

import itertools
import math
import numbers
from typing import Iterator, Protocol, runtime_checkable

import attrs
import numpy as np

from kvcodec_sim.errors import LinkSpecError, quoted
from kvcodec_sim.units import parse_duration

__all__ = ["ExponentialJitter", "Jitter", "NO_JITTER", "UniformJitter", "parse_jitter"]

#: Delays drawn from the generator at a time.
BLOCK = 4096


@runtime_checkable
class Jitter(Protocol):
    """What a jitter model provides (``UniformJitter`` and ``ExponentialJitter`` implement it)."""

    @property
    def mean_s(self) -> float:
        """Mean extra delay per packet, in seconds."""

    def delays(self, rng: np.random.Generator) -> Iterator[float]:
        """An endless iterator of extra delays in seconds (≥ 0), one per packet in order."""


def _seconds(field: str):
    """An attrs converter to float seconds for ``field``: a number, or a duration string (``"2ms"``)."""

    def convert(value: object) -> float:
        if isinstance(value, str):
            return parse_duration(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{field} must be a number of seconds, got {type(value).__name__} {value!r}")
        return float(value)

    return convert


def _check_seconds(_inst, attribute: attrs.Attribute, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise LinkSpecError(f"{attribute.name} must be a finite number of seconds >= 0, got {value!r}")


@attrs.frozen
class UniformJitter:
    """Extra delay uniform on ``[0, max_s]`` seconds (``numpy.random.Generator.uniform``).

    Attributes:
        max_s: largest extra delay in seconds, finite and ≥ 0; 0 means no jitter (and no
            random numbers are drawn). Mean ``max_s / 2``, standard deviation
            ``max_s / √12``.

    Raises:
        TypeError: ``max_s`` is not a number or a duration string.
        LinkSpecError: ``max_s`` is negative, nan or infinite.
    """

    max_s: float = attrs.field(default=0.0, converter=_seconds("max_s"), validator=_check_seconds)

    @property
    def mean_s(self) -> float:
        """``max_s / 2`` seconds."""
        return self.max_s / 2

    def delays(self, rng: np.random.Generator) -> Iterator[float]:
        """Delays ``rng.uniform(0, max_s)``, in blocks; all zero when ``max_s == 0``."""
        if self.max_s == 0.0:
            return itertools.repeat(0.0)
        return _blocks(lambda: rng.uniform(0.0, self.max_s, BLOCK))


@attrs.frozen
class ExponentialJitter:
    """Extra delay exponentially distributed with mean ``mean_s`` seconds
    (``numpy.random.Generator.exponential``): a heavy-ish tail of occasional long delays,
    like queueing behind bursty cross traffic.

    Attributes:
        mean_s: mean extra delay in seconds, finite and ≥ 0; 0 means no jitter.

    Raises:
        TypeError: ``mean_s`` is not a number or a duration string.
        LinkSpecError: ``mean_s`` is negative, nan or infinite.
    """

    mean_s: float = attrs.field(default=0.0, converter=_seconds("mean_s"), validator=_check_seconds)

    def delays(self, rng: np.random.Generator) -> Iterator[float]:
        """Delays ``rng.exponential(mean_s)``, in blocks; all zero when ``mean_s == 0``."""
        if self.mean_s == 0.0:
            return itertools.repeat(0.0)
        return _blocks(lambda: rng.exponential(self.mean_s, BLOCK))


def _blocks(draw) -> Iterator[float]:
    while True:
        yield from draw().tolist()


#: No jitter: ``UniformJitter(0.0)``.
NO_JITTER = UniformJitter(0.0)


def parse_jitter(text: str) -> UniformJitter | ExponentialJitter:
    """Parse a jitter: ``"2ms"`` or ``"uniform:2ms"`` (uniform on [0, 2 ms]) or
    ``"exp:2ms"`` (exponential with mean 2 ms). Durations follow
    :func:`~kvcodec_sim.units.parse_duration`.

    Raises:
        TypeError: ``text`` is not a ``str``.
        LinkSpecError: unknown distribution or malformed duration (one line).
    """
    if not isinstance(text, str):
        raise TypeError(f"jitter must be given as str, got {type(text).__name__}")
    kind, sep, value = text.strip().partition(":")
    if not sep:
        return UniformJitter(parse_duration(text))
    kind = kind.strip()
    if kind == "uniform":
        return UniformJitter(parse_duration(value))
    if kind == "exp":
        return ExponentialJitter(parse_duration(value))
    raise LinkSpecError(f"invalid jitter {quoted(text)}: unknown distribution {kind!r}; expected 2ms, uniform:2ms or exp:2ms")
