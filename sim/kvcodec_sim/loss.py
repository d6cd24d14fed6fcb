"""Random packet loss: independent (Bernoulli) and bursty (Gilbert–Elliott).

A loss model is a frozen description; :meth:`LossModel.losses` turns it into an endless
iterator of ``True`` (lost) / ``False`` (delivered), one value per packet put on one
direction of the wire, driven by a seeded :class:`numpy.random.Generator`. Uniform numbers
are drawn in blocks (:data:`BLOCK` at a time) so that a packet costs one ``next()``.
The iterators are generators: ``send(k)`` in place of ``next()`` says that ``k`` idle
packet slots passed on the link before this packet (the ``ge-clock=time`` channel option,
``specs/link-model.md`` §7.1). Memoryless models ignore it; the Gilbert–Elliott chain
moves ``k`` extra steps.

    >>> import numpy as np
    >>> model = GilbertElliott(p_gb=0.01, p_bg=0.25)          # Gilbert: lose every packet in "bad"
    >>> round(model.loss_rate, 6), model.mean_burst_length
    (0.038462, 4.0)
    >>> losses = model.losses(np.random.default_rng(0))
    >>> sum(next(losses) for _ in range(100_000)) / 100_000   # doctest: +SKIP
    0.0388...
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Iterator, Protocol, runtime_checkable

import attrs
import numpy as np

from kvcodec_sim.errors import LinkSpecError, quoted
from kvcodec_sim.units import parse_probability

__all__ = ["BLOCK", "Bernoulli", "GilbertElliott", "LossModel", "NO_LOSS", "parse_gilbert_elliott", "parse_loss"]

#: Uniform numbers drawn from the generator at a time.
BLOCK = 4096


@runtime_checkable
class LossModel(Protocol):
    """What a loss model provides (``Bernoulli`` and ``GilbertElliott`` implement it)."""

    @property
    def loss_rate(self) -> float:
        """Long-run fraction of packets lost, in ``[0, 1)``."""

    @property
    def mean_burst_length(self) -> float:
        """Mean number of packets in a run of consecutive losses (0.0 when nothing is lost)."""

    def losses(self, rng: np.random.Generator) -> Iterator[bool]:
        """An endless generator: for each packet in order, ``True`` if it is lost. Resumed
        with ``send(k)`` instead of ``next()``, it first lets ``k`` idle packet slots pass."""


def _real(field: str):
    """An attrs converter to float for ``field``; a bool or a non-real value raises TypeError naming it."""

    def convert(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{field} must be a probability (real number), got {type(value).__name__} {value!r}")
        return float(value)

    return convert


def _probability(low_open: bool = False, high_open: bool = False):
    """An attrs validator: a real number in [0, 1] (ends open as asked); names the field."""

    def check(_inst, attribute: attrs.Attribute, value: float) -> None:
        ok = math.isfinite(value) and (0.0 < value if low_open else 0.0 <= value) and (
            value < 1.0 if high_open else value <= 1.0
        )
        if not ok:
            interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
            raise LinkSpecError(f"{attribute.name} must be a probability in {interval}, got {value!r}")

    return check


@attrs.frozen
class Bernoulli:
    """Independent loss: every packet is lost with probability ``p``, independently.

    Attributes:
        p: loss probability per packet, ``0 ≤ p < 1`` (a link that loses everything
            cannot deliver a payload).

    The mean burst length is ``1 / (1 − p)`` (runs of losses are geometric).

    Raises:
        TypeError: ``p`` is not a real number.
        LinkSpecError: ``p`` is outside ``[0, 1)``.
    """

    p: float = attrs.field(default=0.0, converter=_real("p"), validator=_probability(high_open=True))

    @property
    def loss_rate(self) -> float:
        """``p``."""
        return self.p

    @property
    def mean_burst_length(self) -> float:
        """``1 / (1 − p)`` packets; 0.0 when ``p == 0``."""
        return 1.0 / (1.0 - self.p) if self.p > 0.0 else 0.0

    def losses(self, rng: np.random.Generator) -> Iterator[bool]:
        """Packet ``i`` is lost iff the ``i``-th uniform draw ``u`` satisfies ``u < p``.

        With ``p == 0`` no number is drawn at all.
        """
        if self.p == 0.0:
            return self._never()
        return self._draw(rng, self.p)

    @staticmethod
    def _never() -> Iterator[bool]:
        while True:
            yield False

    @staticmethod
    def _draw(rng: np.random.Generator, p: float) -> Iterator[bool]:
        while True:
            for u in rng.random(BLOCK).tolist():
                yield u < p


#: No loss at all: ``Bernoulli(0.0)``.
NO_LOSS = Bernoulli(0.0)


@attrs.frozen
class GilbertElliott:
    """Bursty loss: a two-state Markov chain, Good and Bad, each with its own loss probability.

    Gilbert (1960), "Capacity of a burst-noise channel"; Elliott (1963), "Estimates of error
    rates for codes on burst-noise channels". Each packet sees the chain's current state
    ``S``; it is lost with probability ``loss_good`` (``S`` = Good) or ``loss_bad``
    (``S`` = Bad); then the chain moves: Good → Bad with probability ``p_gb``, Bad → Good
    with probability ``p_bg``. The first packet's state is drawn from the stationary
    distribution ``π_B = p_gb / (p_gb + p_bg)``, ``π_G = 1 − π_B``. The defaults
    ``loss_good = 0``, ``loss_bad = 1`` give the simple Gilbert model, whose loss bursts
    are exactly the Bad sojourns (geometric, mean ``1 / p_bg``).

    Attributes:
        p_gb: probability of moving Good → Bad after a packet, in ``[0, 1]``.
        p_bg: probability of moving Bad → Good after a packet, in ``(0, 1]`` (0 would make
            Bad absorbing).
        loss_good: loss probability in Good, in ``[0, 1]``. Default 0.
        loss_bad: loss probability in Bad, in ``[0, 1]``. Default 1.

    Raises:
        TypeError: a field is not a real number.
        LinkSpecError: a field is out of range, or the stationary loss rate is 1.
    """

    p_gb: float = attrs.field(converter=_real("p_gb"), validator=_probability())
    p_bg: float = attrs.field(converter=_real("p_bg"), validator=_probability(low_open=True))
    loss_good: float = attrs.field(default=0.0, converter=_real("loss_good"), validator=_probability())
    loss_bad: float = attrs.field(default=1.0, converter=_real("loss_bad"), validator=_probability())

    def __attrs_post_init__(self) -> None:
        if self.loss_rate >= 1.0:
            raise LinkSpecError(f"Gilbert-Elliott model {self} loses every packet (stationary loss rate 1)")

    @classmethod
    def from_rate_and_burst(cls, loss_rate: float, mean_burst_length: float) -> "GilbertElliott":
        """The simple Gilbert model (``loss_good = 0``, ``loss_bad = 1``) with a given stationary
        loss rate ``r`` in ``[0, 1)`` and mean burst length ``b ≥ 1`` packets:
        ``p_bg = 1 / b``, ``p_gb = r · p_bg / (1 − r)``.

        Raises:
            LinkSpecError: ``r`` is outside ``[0, 1)``, ``b < 1``, or ``p_gb`` comes out above 1.
        """
        if not (0.0 <= loss_rate < 1.0):
            raise LinkSpecError(f"loss_rate must be in [0, 1), got {loss_rate!r}")
        if not (mean_burst_length >= 1.0 and math.isfinite(mean_burst_length)):
            raise LinkSpecError(f"mean_burst_length must be a finite number of packets >= 1, got {mean_burst_length!r}")
        p_bg = 1.0 / mean_burst_length
        return cls(p_gb=loss_rate * p_bg / (1.0 - loss_rate), p_bg=p_bg)

    @property
    def bad_fraction(self) -> float:
        """Stationary probability of the Bad state, ``π_B = p_gb / (p_gb + p_bg)``."""
        return self.p_gb / (self.p_gb + self.p_bg)

    @property
    def loss_rate(self) -> float:
        """Stationary loss rate ``π_G · loss_good + π_B · loss_bad``."""
        bad = self.bad_fraction
        return (1.0 - bad) * self.loss_good + bad * self.loss_bad

    @property
    def mean_burst_length(self) -> float:
        """Mean length, in packets, of a maximal run of consecutive losses in the stationary process.

        Every run ends with exactly one (lost, delivered) pair of neighbours, so the mean
        run length is ``P(lost) / P(packet n lost and packet n+1 delivered)``, where
        ``P(L_n, ¬L_{n+1}) = Σ_s π_s ℓ_s Σ_t T[s,t] (1 − ℓ_t)`` over the states ``s, t``
        (``ℓ`` the loss probabilities, ``T`` the transition matrix). For the simple Gilbert
        model this is ``1 / p_bg``. 0.0 when nothing is lost.
        """
        rate = self.loss_rate
        if rate == 0.0:
            return 0.0
        bad = self.bad_fraction
        lg, lb = self.loss_good, self.loss_bad
        after_good = (1.0 - self.p_gb) * (1.0 - lg) + self.p_gb * (1.0 - lb)  # P(next delivered | now Good)
        after_bad = self.p_bg * (1.0 - lg) + (1.0 - self.p_bg) * (1.0 - lb)
        ends = (1.0 - bad) * lg * after_good + bad * lb * after_bad
        return rate / ends if ends > 0.0 else math.inf

    def bad_after(self, steps: int, bad: bool) -> float:
        """Probability that the chain is in Bad ``steps`` steps after being in Bad (``bad``)
        or Good: ``π_B + (1 − π_B) λᵏ`` from Bad and ``π_B (1 − λᵏ)`` from Good, with
        ``λ = 1 − p_gb − p_bg`` (the second eigenvalue of the transition matrix).

        Raises:
            TypeError: ``steps`` is not an integer.
            ValueError: ``steps`` is negative.
        """
        steps = operator.index(steps)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps!r}")
        pi_b, lam_k = self.bad_fraction, (1.0 - self.p_gb - self.p_bg) ** steps
        return pi_b + (1.0 - pi_b) * lam_k if bad else pi_b * (1.0 - lam_k)

    def losses(self, rng: np.random.Generator) -> Iterator[bool]:
        """Per packet: draw ``u1``, lost iff ``u1 < ℓ(S)``; draw ``u2``, then Good → Bad iff
        ``u2 < p_gb`` and Bad → Good iff ``u2 < p_bg``. The initial state takes one draw
        first: Bad iff ``u0 < π_B``. Resumed with ``send(k)``, ``k > 0``, after a packet, the
        chain then takes ``k`` more steps with the stream's next draw ``u3``: Bad iff
        ``u3 < bad_after(k, S)``. Draws are taken in exactly this order from the stream
        (buffered :data:`BLOCK` pairs at a time, which yields the same values)."""
        p_gb, p_bg, loss_good, loss_bad = self.p_gb, self.p_bg, self.loss_good, self.loss_bad
        bad = bool(rng.random() < self.bad_fraction)
        block, j = rng.random(2 * BLOCK).tolist(), 0
        while True:
            if j + 3 > len(block):  # room for u1, u2 and a possible u3
                block, j = block[j:] + rng.random(2 * BLOCK).tolist(), 0
            u1, u2 = block[j], block[j + 1]
            j += 2
            if bad:
                idle = yield u1 < loss_bad
                bad = u2 >= p_bg
            else:
                idle = yield u1 < loss_good
                bad = u2 < p_gb
            if idle:
                bad = block[j] < self.bad_after(idle, bad)
                j += 1


def parse_loss(text: str) -> Bernoulli:
    """Parse an independent loss rate, ``"0.01"`` or ``"1%"``, into a :class:`Bernoulli`.

    Raises:
        TypeError: ``text`` is not a ``str``.
        LinkSpecError: ``text`` is not a probability, or it is 1 (100 %).
    """
    p = parse_probability(text)
    if p >= 1.0:
        raise LinkSpecError(f"invalid loss rate {quoted(text)}: must be below 1 (100%), or nothing would ever arrive")
    return Bernoulli(p)


def parse_gilbert_elliott(text: str) -> GilbertElliott:
    """Parse ``"p_gb/p_bg"`` or ``"p_gb/p_bg/loss_good/loss_bad"`` into a :class:`GilbertElliott`.

    Each part is a probability (``"0.01"`` or ``"1%"``). With two parts, ``loss_good = 0``
    and ``loss_bad = 1`` (the simple Gilbert model).

    Raises:
        TypeError: ``text`` is not a ``str``.
        LinkSpecError: not 2 or 4 parts, a part is not a probability, or a parameter is
            out of range (one line naming it).
    """
    if not isinstance(text, str):
        raise TypeError(f"Gilbert-Elliott parameters must be given as str, got {type(text).__name__}")
    parts = text.split("/")
    shown = quoted(text)
    if len(parts) not in (2, 4):
        raise LinkSpecError(
            f"invalid Gilbert-Elliott parameters {shown}: expected p_gb/p_bg or p_gb/p_bg/loss_good/loss_bad, "
            "e.g. 0.01/0.25 or 1%/25%/0/1"
        )
    values = [parse_probability(part) for part in parts]
    try:
        return GilbertElliott(*values)
    except LinkSpecError as err:
        raise LinkSpecError(f"invalid Gilbert-Elliott parameters {shown}: {err}") from None
