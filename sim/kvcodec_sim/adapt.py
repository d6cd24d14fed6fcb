"""Bandwidth adaptation: pick each chunk's level from the bandwidth estimate to meet a TTFT
target, or send text when that is faster (``specs/streaming.md`` §5 is the contract).

Inputs are numbers measured elsewhere: per level (best quality first) the bytes and the
receiver's decode time of every chunk, the question's prefill time through each chunk's
layers, the first-token (head) time, the target, and optionally the text path.

**Sender and timing.** The sender holds every chunk encoded at every level before it
starts (``start_s`` covers that encode) and sends the chosen chunks back to back as one
reliable stream. It picks chunk ``k``'s level at ``c_k``, the moment the transport first
needs one of its bytes: ``c_0 = start_s``, and for ``k ≥ 1`` when the packet holding the
chunk's first byte is handed to the data path
(:meth:`~kvcodec_sim.delivery.Delivery.time_handed_over`). What happens before ``c_k``
does not depend on later chunks' sizes, so ``c_k`` and everything the sender knows then
come from a run of the stream of chunks ``0 … k−1`` plus one byte.

**Bandwidth estimate** (payload bit/s), from cumulative acknowledgements only: starting
from ``initial_bps``, an EWMA (weight ``alpha`` on the newest) over one sample per chunk
fully acknowledged by ``c_k`` — acknowledged bytes gained since the previous such chunk
over the time it took — plus one sample for the partly acknowledged chunk when it has
gained at least ``min_sample_packets`` packets.

**Prediction** at ``c_k`` with estimate ``B``, known latency ``λ`` and ``A`` bytes
acknowledged (the last at ``t_A``): a stream offset ``x ≤ A`` arrived by ``t_A(x) − λ``;
a later offset arrives at ``max(c_k + λ + m, τ + m + (x − A)·8/B)`` with ``m = mtu·8/B``
(one packet) and ``τ = t_A − λ`` (``c_k + λ`` when ``A = 0``). The receiver recursion of
``streaming.py`` then gives the predicted TTFT. On a lossless channel whose rate never
falls below the estimate this is an upper bound of the real TTFT.

**Rule.** At ``c_k`` the predicted TTFT of each level ``ℓ`` is computed with chunks
``k … K−1`` all at ``ℓ`` (the levels already sent as they were). The controller takes the
best-quality level whose prediction meets the target; if none does, the level with the
smallest prediction, and the decision is marked infeasible. Before starting it predicts
the text path (``λ + m + text_bytes·8/B + text prefill``) and sends text instead if that
is smaller than chunk 0's prediction for its chosen level.

**Hindsight optimum.** Knowing the channel (trace and loss draws: same seed), the
assignment of levels with the best quality (smallest layer-weighted mean rank; text ranks
−1, above every level) whose TTFT meets the target, ties to the faster; when none meets
it, the fastest. Searched exhaustively over all ``L^K`` assignments and text when the
channel has a closed form and ``L^K ≤ 4096``; otherwise over text, each uniform level and
the controller's own assignment, each run with the same seed.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import attrs
import numpy as np

from kvcodec_sim.arq import ArqConfig
from kvcodec_sim.channel import Channel
from kvcodec_sim.delivery import Delivery, LosslessPipe, deliver, has_closed_form
from kvcodec_sim.link import Link
from kvcodec_sim.streaming import ChunkWork, Timeline, build_timeline, receiver_schedule

__all__ = ["Level", "TextOption", "StreamPlan", "ControllerConfig", "Decision", "Choice", "Hindsight",
           "AdaptResult", "run_controller", "evaluate", "hindsight", "HINDSIGHT_EXHAUSTIVE_MAX"]

#: Largest number of level assignments the hindsight search tries one by one.
HINDSIGHT_EXHAUSTIVE_MAX = 4096
TEXT = "text"


def _seconds(_inst, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be finite seconds >= 0, got {value!r}")


@attrs.frozen
class Level:
    """One level: its name (a pipeline spec), and per chunk the bytes on the stream and the
    receiver's decode time."""

    name: str
    chunk_bytes: tuple[int, ...] = attrs.field(converter=tuple)
    decode_s: tuple[float, ...] = attrs.field(converter=tuple)

    def __attrs_post_init__(self) -> None:
        if len(self.chunk_bytes) != len(self.decode_s) or not self.chunk_bytes:
            raise ValueError(f"level {self.name!r}: {len(self.chunk_bytes)} sizes but {len(self.decode_s)} decode times")
        if any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in self.chunk_bytes):
            raise ValueError(f"level {self.name!r}: chunk sizes must be integers >= 1, got {self.chunk_bytes}")
        if any(not (math.isfinite(t) and t >= 0) for t in self.decode_s):
            raise ValueError(f"level {self.name!r}: decode times must be finite seconds >= 0")


@attrs.frozen
class TextOption:
    """The text path: bytes of the context text, and the receiver's prefill of context +
    question from text (first token included)."""

    nbytes: int = attrs.field(validator=attrs.validators.and_(attrs.validators.instance_of(int), attrs.validators.ge(1)))
    prefill_s: float = attrs.field(validator=_seconds)


@attrs.frozen
class StreamPlan:
    """What the controller chooses among (see the module docstring).

    Attributes:
        levels: best quality first; all with one entry per chunk.
        prefill_s: per chunk, the question's prefill through its layers.
        layer_counts: per chunk, its number of layers (the quality weights).
        head_s: first-token time after the last layer.
        target_s: the TTFT target, seconds from the request (time 0).
        start_s: when the KV sender can start sending (its encode before).
        text: the text path, or ``None`` to never consider it.
        first_layers: per chunk, its first layer (for reports; default: cumulative counts).
    """

    levels: tuple[Level, ...] = attrs.field(converter=tuple)
    prefill_s: tuple[float, ...] = attrs.field(converter=tuple)
    layer_counts: tuple[int, ...] = attrs.field(converter=tuple)
    head_s: float = attrs.field(validator=_seconds)
    target_s: float = attrs.field(validator=_seconds)
    start_s: float = attrs.field(default=0.0, validator=_seconds)
    text: TextOption | None = None
    first_layers: tuple[int, ...] | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        if not self.levels:
            raise ValueError("a stream plan needs at least one level")
        k = self.chunks
        if len(self.prefill_s) != k or len(self.layer_counts) != k:
            raise ValueError(f"{k} chunks but {len(self.prefill_s)} prefill times and {len(self.layer_counts)} layer counts")
        if any(len(level.chunk_bytes) != k for level in self.levels):
            raise ValueError("every level must give one size per chunk")
        if any(c < 1 for c in self.layer_counts):
            raise ValueError("every chunk holds at least one layer")
        if self.first_layers is None:
            object.__setattr__(self, "first_layers", tuple(itertools.accumulate((0,) + self.layer_counts[:-1])))

    @property
    def chunks(self) -> int:
        return len(self.levels[0].chunk_bytes)

    def works(self, assignment: Sequence[int]) -> list[ChunkWork]:
        """The chunks of a level assignment (one level index per chunk)."""
        return [
            ChunkWork(int(self.levels[lv].chunk_bytes[k]), self.levels[lv].decode_s[k], self.prefill_s[k],
                      self.first_layers[k], self.layer_counts[k], self.levels[lv].name)
            for k, lv in enumerate(assignment)
        ]

    def score(self, assignment: Sequence[int] | None) -> float:
        """Quality score, smaller is better: layer-weighted mean level rank; text is −1."""
        if assignment is None:
            return -1.0
        return sum(c * lv for c, lv in zip(self.layer_counts, assignment)) / sum(self.layer_counts)

    def text_work(self) -> ChunkWork:
        assert self.text is not None
        return ChunkWork(self.text.nbytes, 0.0, self.text.prefill_s, 0, sum(self.layer_counts), TEXT)


@attrs.frozen
class ControllerConfig:
    """Controller parameters (module docstring).

    Attributes:
        initial_bps: payload bandwidth estimate before any measurement, bit/s (> 0).
        alpha: EWMA weight of the newest sample, in (0, 1].
        latency_s: one-way propagation delay the sender knows (from connection setup);
            ``None`` for the channel's.
        min_sample_packets: packets a partly acknowledged chunk must have gained to give
            a sample.
    """

    initial_bps: float
    alpha: float = 0.5
    latency_s: float | None = None
    min_sample_packets: int = 16

    def __attrs_post_init__(self) -> None:
        v = self.initial_bps
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"initial_bps must be a finite bit rate > 0, got {v!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must lie in (0, 1], got {self.alpha!r}")
        if self.latency_s is not None and not (math.isfinite(self.latency_s) and self.latency_s >= 0):
            raise ValueError(f"latency_s must be finite seconds >= 0, got {self.latency_s!r}")
        if isinstance(self.min_sample_packets, bool) or not isinstance(self.min_sample_packets, int) \
                or self.min_sample_packets < 1:
            raise ValueError(f"min_sample_packets must be an integer >= 1, got {self.min_sample_packets!r}")


@attrs.frozen
class Decision:
    """The controller's choice for one chunk."""

    chunk: int
    time_s: float
    estimate_bps: float
    acked_bytes: int
    predicted_s: tuple[float, ...]  # per level: predicted TTFT with the remaining chunks at it
    level: int
    feasible: bool


@attrs.frozen
class Choice:
    """One complete way to send: text (``assignment is None``) or a level per chunk."""

    assignment: tuple[int, ...] | None
    ttft_s: float
    met: bool
    score: float

    @property
    def mode(self) -> str:
        return TEXT if self.assignment is None else "kv"


@attrs.frozen
class Hindsight:
    best: Choice
    method: str  # "exhaustive" or "candidates"
    candidates: int


@attrs.frozen
class AdaptResult:
    """What the controller did and how it went."""

    plan: StreamPlan = attrs.field(repr=False)
    choice: Choice
    decisions: tuple[Decision, ...]
    predicted_text_s: float | None
    predicted_kv_s: float
    timeline: Timeline
    hindsight: Hindsight | None

    @property
    def ttft_s(self) -> float:
        return self.choice.ttft_s

    @property
    def met(self) -> bool:
        return self.choice.met

    @property
    def mode(self) -> str:
        return self.choice.mode

    def level_names(self, choice: Choice | None = None) -> list[str]:
        choice = choice or self.choice
        if choice.assignment is None:
            return [TEXT]
        return [self.plan.levels[lv].name for lv in choice.assignment]

    def to_json(self) -> dict:
        def choice_json(c: Choice) -> dict:
            return {"mode": c.mode, "levels": self.level_names(c), "ttft_s": c.ttft_s, "met": c.met, "score": c.score}

        return {
            "target_s": self.plan.target_s,
            "levels": [lv.name for lv in self.plan.levels],
            **choice_json(self.choice),
            "predicted_text_s": self.predicted_text_s,
            "predicted_kv_s": self.predicted_kv_s,
            "decisions": [attrs.asdict(d) for d in self.decisions],
            "hindsight": None if self.hindsight is None else {
                **choice_json(self.hindsight.best), "method": self.hindsight.method,
                "candidates": self.hindsight.candidates},
        }


# ----------------------------------------------------------------------------- evaluation
def _as_channel(channel: Channel | Link) -> Channel:
    return Channel(channel) if isinstance(channel, Link) else channel


def evaluate(plan: StreamPlan, assignment: Sequence[int] | None, channel: Channel | Link, *,
             arq: ArqConfig | None = None, seed=0, label: str = "") -> Timeline:
    """The exact timeline of text (``assignment is None``) or of a level assignment."""
    channel = _as_channel(channel)
    if assignment is None:
        work = plan.text_work()
        return build_timeline([work], deliver(channel, work.nbytes, config=arq, seed=seed), start_s=0.0, head_s=0.0,
                              label=label or "text + recompute", mode=TEXT)
    works = plan.works(assignment)
    total = sum(w.nbytes for w in works)
    return build_timeline(works, deliver(channel, total, config=arq, seed=seed), start_s=plan.start_s,
                          head_s=plan.head_s, label=label, mode="stream")


def _choice(plan: StreamPlan, assignment, ttft: float) -> Choice:
    a = None if assignment is None else tuple(int(x) for x in assignment)
    return Choice(a, ttft, ttft <= plan.target_s, plan.score(a))


def _better(a: Choice, b: Choice | None) -> bool:
    """Whether ``a`` beats ``b`` (module docstring: quality within the target, else speed)."""
    if b is None:
        return True
    if a.met != b.met:
        return a.met
    key_a = (a.score, a.ttft_s) if a.met else (a.ttft_s, a.score)
    key_b = (b.score, b.ttft_s) if b.met else (b.ttft_s, b.score)
    return key_a < key_b


def hindsight(plan: StreamPlan, channel: Channel | Link, *, arq: ArqConfig | None = None, seed=0,
              include: Sequence[Sequence[int]] = ()) -> Hindsight:
    """The hindsight optimum (module docstring); ``include`` adds assignments to the
    candidates of the non-exhaustive search."""
    channel = _as_channel(channel)
    levels, k = len(plan.levels), plan.chunks
    best: Choice | None = None
    count = 0
    if plan.text is not None:
        best = _choice(plan, None, evaluate(plan, None, channel, arq=arq, seed=seed).ttft_s)
        count += 1
    if has_closed_form(channel, arq) and levels ** k <= HINDSIGHT_EXHAUSTIVE_MAX:
        sizes = [[int(lv.chunk_bytes[j]) for lv in plan.levels] for j in range(k)]
        pipe = LosslessPipe(channel, sum(max(s) for s in sizes), arq)
        for assignment in itertools.product(range(levels), repeat=k):
            works = plan.works(assignment)
            ends = list(itertools.accumulate(w.nbytes for w in works))
            arrivals = [plan.start_s + pipe.time_delivered(e, ends[-1]) for e in ends]
            _, ttft = receiver_schedule(arrivals, works, plan.head_s, plan.start_s)
            candidate = _choice(plan, assignment, ttft)
            count += 1
            if _better(candidate, best):
                best = candidate
        return Hindsight(best, "exhaustive", count)
    tried = set()
    for assignment in [tuple([lv] * k) for lv in range(levels)] + [tuple(a) for a in include]:
        if assignment in tried:
            continue
        tried.add(assignment)
        candidate = _choice(plan, assignment, evaluate(plan, assignment, channel, arq=arq, seed=seed).ttft_s)
        count += 1
        if _better(candidate, best):
            best = candidate
    return Hindsight(best, "candidates", count)


# ----------------------------------------------------------------------------- the controller
def _estimate(d: Delivery, ends: Sequence[int], now: float, cfg: ControllerConfig) -> float:
    """The EWMA bandwidth estimate at ``now`` (seconds from the stream's start) from the
    cumulative acknowledgements of ``d`` (module docstring)."""
    samples, prev_t, prev_a = [], 0.0, 0
    for end in ends:
        done = d.time_acked(end)
        if done <= now:
            acked = d.acked_bytes(done)
            if done > prev_t and acked > prev_a:
                samples.append((acked - prev_a) * 8 / (done - prev_t))
            prev_t, prev_a = done, acked
            continue
        acked = d.acked_bytes(now)
        if acked - prev_a >= cfg.min_sample_packets * d.payload_per_packet:
            t = d.time_acked(acked)
            if t > prev_t:
                samples.append((acked - prev_a) * 8 / (t - prev_t))
        break
    estimate = cfg.initial_bps
    for s in samples:
        estimate = (1 - cfg.alpha) * estimate + cfg.alpha * s
    return estimate


def _predict(plan: StreamPlan, assignment: Sequence[int], d: Delivery | None, now_abs: float, estimate: float,
             latency: float, mtu: int) -> float:
    """Predicted TTFT of ``assignment`` at ``now_abs`` (module docstring); ``d`` is the
    delivery of the stream so far (``None`` before the first byte)."""
    works = plan.works(assignment)
    packet = mtu * 8 / estimate
    acked = d.acked_bytes(now_abs - plan.start_s) if d is not None else 0
    if acked > 0:
        tau = plan.start_s + d.time_acked(acked) - latency
    else:
        tau = now_abs + latency
    arrivals, pos = [], 0
    for w in works:
        pos += w.nbytes
        if pos <= acked:
            arrivals.append(plan.start_s + d.time_acked(pos) - latency)
        else:
            arrivals.append(max(now_abs + latency + packet, tau + packet + (pos - acked) * 8 / estimate))
    _, ttft = receiver_schedule(arrivals, works, plan.head_s, plan.start_s)
    return ttft


def run_controller(plan: StreamPlan, channel: Channel | Link, config: ControllerConfig, *,
                   arq: ArqConfig | None = None, seed=0, with_hindsight: bool = True) -> AdaptResult:
    """Run the adaptive sender over ``channel`` (module docstring) and report what happened.

    Raises:
        TransferAborted: the channel lost a packet more than ``arq.max_transmissions`` times.
    """
    channel = _as_channel(channel)
    link = channel.link
    latency = link.latency_s if config.latency_s is None else config.latency_s
    k_total, levels = plan.chunks, len(plan.levels)
    assignment: list[int] = []
    decisions: list[Decision] = []
    ends: list[int] = []
    for k in range(k_total):
        if k == 0:
            d, now = None, plan.start_s
            estimate = config.initial_bps
        else:
            d = deliver(channel, ends[-1] + 1, config=arq, seed=seed)  # the stream so far + chunk k's first byte
            now = plan.start_s + d.time_handed_over(ends[-1])
            estimate = _estimate(d, ends, now - plan.start_s, config)
        predicted = tuple(
            _predict(plan, assignment + [lv] * (k_total - k), d, now, estimate, latency, link.mtu_bytes)
            for lv in range(levels)
        )
        feasible = [lv for lv in range(levels) if predicted[lv] <= plan.target_s]
        chosen = feasible[0] if feasible else min(range(levels), key=lambda lv: (predicted[lv], lv))
        decisions.append(Decision(k, now, estimate, d.acked_bytes(now - plan.start_s) if d is not None else 0,
                                  predicted, chosen, bool(feasible)))
        assignment.append(chosen)
        ends.append((ends[-1] if ends else 0) + int(plan.levels[chosen].chunk_bytes[k]))
        if k == 0:  # before the first byte: would text be faster?
            predicted_kv = predicted[chosen]
            predicted_text = None
            use_text = False
            if plan.text is not None:
                packet = link.mtu_bytes * 8 / config.initial_bps
                predicted_text = latency + packet + plan.text.nbytes * 8 / config.initial_bps + plan.text.prefill_s
                use_text = predicted_text < predicted_kv
            if use_text:
                break

    if use_text:
        timeline = evaluate(plan, None, channel, arq=arq, seed=seed, label="adaptive: text + recompute")
        choice = _choice(plan, None, timeline.ttft_s)
    else:
        timeline = evaluate(plan, assignment, channel, arq=arq, seed=seed, label="adaptive stream")
        choice = _choice(plan, assignment, timeline.ttft_s)
    best = None
    if with_hindsight:
        best = hindsight(plan, channel, arq=arq, seed=seed, include=[assignment] if len(assignment) == k_total else [])
    return AdaptResult(plan, choice, tuple(decisions), predicted_text, predicted_kv, timeline, best)
