"""Reliable transport over a lossy :class:`~kvcodec_sim.channel.Channel`: selective-repeat ARQ.

Every byte arrives, in order, whatever the channel loses (below 100 %). The protocol
(``specs/link-model.md`` §9 is the contract):

* **Sender.** The payload is cut into packets as in §4 (sequence numbers ``0 … n−1``). It
  may have packets ``snd_una … snd_una + W − 1`` outstanding, where ``snd_una`` is the
  lowest unacknowledged packet and ``W`` the window in packets. New packets are handed to
  the data path as soon as the window allows (the path's queue and serializer pace them).
* **Receiver.** Every data packet that arrives, duplicate or not, makes it send one ACK
  of ``ack_bytes`` on the reverse path. The ACK carries ``cum`` (every packet ``< cum``
  has arrived: a cumulative ACK) and up to ``sack_blocks`` SACK blocks, closed ranges
  ``[first, last]`` of packets above ``cum`` that have all arrived (RFC 2018): the block
  holding the packet that triggered the ACK first, then the blocks of the previous ACK
  that are still above ``cum`` and distinct, in their order, so each block is repeated in
  later ACKs and a lost ACK rarely costs information. It delivers packets to the
  application in order; a packet's *delivery time* is when it and every packet before it
  have arrived.
* **RTT and RTO.** RFC 6298 (:class:`~kvcodec_sim.rto.RtoEstimator`): an ACK whose
  triggering packet is not yet acknowledged at the sender and was transmitted exactly
  once gives one RTT sample, ``now − its send time``; retransmitted packets give none
  (Karn's algorithm).
* **Retransmission timer, per packet.** Every outstanding packet has its own timer of the
  estimator's current RTO. It runs from the later of the packet's latest transmission and
  the last ACK that acknowledged new data (RFC 6298 §5.3's restart, applied to every
  outstanding packet, so that packets waiting in a long bottleneck queue behind a busy
  link do not time out). At an expiry instant every packet whose timer has expired is
  retransmitted, and RTO is doubled once (§5.5) if one of those transmissions had been
  armed at the current backoff level; the doubled RTO holds until the next valid sample
  (§5.7; Karn's timer backoff, which lets the sender escape when a round trip exceeds
  the initial RTO).
* **Fast retransmit (SACK loss detection).** As RFC 6675's DupThresh, counted in
  transmissions: a transmission is deemed lost once a transmission handed over at least
  ``dupthresh`` transmissions after it is known to have arrived; it is then retransmitted
  at once. Only packets transmitted once count as that evidence (a retransmitted packet's
  ACK may stem from any of its copies). ``dupthresh=None`` leaves timeouts only.
* **End.** The run ends when the sender holds an acknowledgement for every packet.

Engine: a ``heapq`` event loop (events ordered by time, then by scheduling order, as in
SimPy), not SimPy processes. The paths compute queueing, serialization, loss and jitter
when a packet is handed over, so a packet costs two events (its arrival and its ACK's
arrival); the timers cost one pending check, for the oldest live transmission. A SimPy
event costs about 4 µs against 1–2 µs for a heap entry (measured on the 2-core VM), and
the protocol reads most plainly as one loop; ``benchmarks/bench_arq.py`` prints the speed
against the lossless SimPy :func:`~kvcodec_sim.transfer.simulate_transfer` measured in
the same run. The SimPy model stays the reference: with no loss and a window that covers
the bandwidth-delay product, :func:`simulate_arq` gives bit-for-bit the same delivery time.
"""

from __future__ import annotations

import heapq
import itertools
import math
import numbers
import re
from collections import deque

import attrs
import numpy as np

from kvcodec_sim.channel import Channel
from kvcodec_sim.errors import LinkSpecError, TransferAborted, quoted
from kvcodec_sim.link import Link
from kvcodec_sim.options import split_options
from kvcodec_sim.rto import RtoEstimator
from kvcodec_sim.units import parse_duration, parse_size

__all__ = ["ARQ_OPTIONS", "ArqConfig", "ArqResult", "simulate_arq"]

#: Keys :meth:`ArqConfig.parse` accepts.
ARQ_OPTIONS = ("window", "initial-rto", "min-rto", "max-rto", "granularity", "dupthresh", "ack-bytes",
               "max-transmissions", "sack-blocks")
_EXAMPLE = "window=64,min-rto=200ms,dupthresh=3"

_DATA, _ACK, _TIMER = 0, 1, 2


def _optional_int(field: str, low: int):
    def convert(value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{field} must be an integer or None, got {type(value).__name__} {value!r}")
        if value < low:
            raise LinkSpecError(f"{field} must be >= {low}, got {value!r}")
        return int(value)

    return convert


def _seconds(field: str, positive: bool = False):
    def convert(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{field} must be a number of seconds, got {type(value).__name__} {value!r}")
        value = float(value)
        if not (math.isfinite(value) and (value > 0.0 if positive else value >= 0.0)):
            raise LinkSpecError(f"{field} must be a finite number of seconds {'>' if positive else '>='} 0, got {value!r}")
        return value

    return convert


@attrs.frozen
class ArqConfig:
    """Parameters of the selective-repeat ARQ (defaults in brackets).

    Attributes:
        window_packets: sender window ``W`` in packets, ≥ 1; ``None`` [default] for
            :meth:`auto_window`, twice the bandwidth-delay product.
        initial_rto_s: RTO before the first RTT sample, seconds [1.0, RFC 6298 §2.1].
        min_rto_s: RTO floor, seconds [0.2, as Linux; RFC 6298 says 1 s].
        max_rto_s: RTO ceiling (also caps the backed-off timers), seconds [60.0].
        clock_granularity_s: ``G`` of RFC 6298, seconds [0.001]. It and ``min_rto_s``
            may not both be 0 (RTO could then shrink to 0 s on a zero-delay path).
        dupthresh: transmissions acknowledged after a lost one before it is retransmitted
            without waiting for its timer, ≥ 1; ``None`` for timeouts only [3, RFC 6675].
        ack_bytes: wire size of an ACK in bytes, ≥ 0; ``None`` [default] for the link's
            ``header_bytes`` (a bare TCP/IP header).
        max_transmissions: most transmissions of one packet before the transfer is
            abandoned with :class:`~kvcodec_sim.errors.TransferAborted` [1000].
        sack_blocks: most SACK blocks an ACK carries, ≥ 1 [3, as RFC 2018 allows next
            to the timestamp option].

    Raises:
        TypeError: a field has the wrong type.
        LinkSpecError: a field is out of range (the message names it).
    """

    window_packets: int | None = attrs.field(default=None, converter=_optional_int("window_packets", 1))
    initial_rto_s: float = attrs.field(default=1.0, converter=_seconds("initial_rto_s", positive=True))
    min_rto_s: float = attrs.field(default=0.2, converter=_seconds("min_rto_s"))
    max_rto_s: float = attrs.field(default=60.0, converter=_seconds("max_rto_s", positive=True))
    clock_granularity_s: float = attrs.field(default=0.001, converter=_seconds("clock_granularity_s"))
    dupthresh: int | None = attrs.field(default=3, converter=_optional_int("dupthresh", 1))
    ack_bytes: int | None = attrs.field(default=None, converter=_optional_int("ack_bytes", 0))
    max_transmissions: int = attrs.field(default=1000, converter=_optional_int("max_transmissions", 1))
    sack_blocks: int = attrs.field(default=3, converter=_optional_int("sack_blocks", 1))

    def __attrs_post_init__(self) -> None:
        for name in ("max_transmissions", "sack_blocks"):
            if getattr(self, name) is None:
                raise TypeError(f"{name} must be an integer, got None")
        if self.min_rto_s > self.max_rto_s:
            raise LinkSpecError(f"min_rto_s {self.min_rto_s!r} is greater than max_rto_s {self.max_rto_s!r}")
        if self.min_rto_s == 0.0 and self.clock_granularity_s == 0.0:
            raise LinkSpecError("min_rto_s and clock_granularity_s are both 0: RTO could shrink to 0 s")

    @classmethod
    def parse(cls, text: str) -> "ArqConfig":
        """Parse options such as ``"window=64,min-rto=200ms,dupthresh=off"``.

        Keys (any subset, each once): ``window`` (packets, or ``auto``), ``initial-rto``,
        ``min-rto``, ``max-rto``, ``granularity`` (durations: ``200ms``, ``1s``),
        ``dupthresh`` (packets, or ``off``), ``ack-bytes`` (size: ``40`` or ``52B``),
        ``max-transmissions``, ``sack-blocks`` (counts). An empty string gives the defaults.

        Raises:
            TypeError: ``text`` is not a ``str``.
            LinkSpecError: unknown or repeated key, or a bad value (one line).
        """
        if not isinstance(text, str):
            raise TypeError(f"ARQ options must be given as str, got {type(text).__name__}")
        items = text.split(",") if text.strip() else []
        options = split_options(items, "ARQ options", text, ARQ_OPTIONS, _EXAMPLE)
        fields = {
            "window": ("window_packets", lambda v: None if v == "auto" else _count(v)),
            "initial-rto": ("initial_rto_s", parse_duration),
            "min-rto": ("min_rto_s", parse_duration),
            "max-rto": ("max_rto_s", parse_duration),
            "granularity": ("clock_granularity_s", parse_duration),
            "dupthresh": ("dupthresh", lambda v: None if v == "off" else _count(v)),
            "ack-bytes": ("ack_bytes", parse_size),
            "max-transmissions": ("max_transmissions", _count),
            "sack-blocks": ("sack_blocks", _count),
        }
        kwargs = {}
        for key, value in options.items():
            name, parse = fields[key]
            try:
                kwargs[name] = parse(value)
            except LinkSpecError as err:
                raise LinkSpecError(f"invalid ARQ option {key}={quoted(value)}: {err}") from None
        try:
            return cls(**kwargs)
        except LinkSpecError as err:
            raise LinkSpecError(f"invalid ARQ options {quoted(text)}: {err}") from None

    def ack_size(self, link: Link) -> int:
        """ACK wire size in bytes on ``link``: ``ack_bytes``, or ``link.header_bytes``."""
        return link.header_bytes if self.ack_bytes is None else self.ack_bytes

    def auto_window(self, channel: Channel) -> int:
        """The default window in packets: ``max(16, 2 · ceil(R · RTT0 / (8 · mtu)))``.

        ``R`` is the channel's highest data rate (bit/s) and ``RTT0 = mtu·8/R +
        ack_bytes·8/bandwidth + 2·latency + 2·mean jitter`` (seconds), the round trip of
        one full packet through empty queues. Twice the bandwidth-delay product keeps the
        link busy while a loss is being repaired.
        """
        link = channel.link
        rate = channel.max_data_rate_bps
        rtt0 = (link.mtu_bytes * 8 / rate + self.ack_size(link) * 8 / link.bandwidth_bps
                + 2 * link.latency_s + 2 * channel.jitter.mean_s)
        return max(16, 2 * math.ceil(rate * rtt0 / (8 * link.mtu_bytes)))

    def window_for(self, channel: Channel) -> int:
        """``window_packets``, or :meth:`auto_window` when it is ``None``."""
        return self.window_packets if self.window_packets is not None else self.auto_window(channel)


def _count(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise LinkSpecError(f"{quoted(text)} is not a whole number")
    return int(text)


_counts = [attrs.validators.instance_of(int), attrs.validators.ge(0)]
_seconds_ok = [attrs.validators.instance_of(float), attrs.validators.ge(0.0)]
_array = attrs.validators.instance_of(np.ndarray)


def _readonly(values, dtype) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    array.flags.writeable = False
    return array


@attrs.frozen
class ArqResult:
    """What happened when a payload crossed a channel under selective-repeat ARQ.

    Sizes in bytes, times in seconds from the first transmission (time 0), rates in bit/s.

    Attributes:
        payload_bytes: ``N``.
        packets: ``n``, packets the payload is cut into (§4).
        payload_per_packet: payload bytes in a full packet, ``mtu − header``.
        window_packets: the window ``W`` used.
        transmissions: data packets handed to the data path, first sends and
            retransmissions, including copies the queue dropped.
        retransmissions: ``transmissions − packets``.
        timeouts: retransmissions triggered by a timer.
        fast_retransmits: retransmissions triggered by SACK loss detection.
        queue_drops: data packets dropped by the bottleneck queue.
        wire_losses: data packets lost on the wire (random loss).
        duplicates: data packets that arrived when a copy had already arrived (spurious
            retransmissions that were not lost).
        wire_bytes: data-direction bytes serialized, headers and lost copies included.
        acks_sent: ACKs the receiver sent (one per data packet that arrived).
        acks_lost: ACKs lost on the reverse wire.
        rtt_samples: RTT samples taken (Karn's algorithm skips retransmitted packets).
        srtt_s: final smoothed RTT, or ``None`` without a sample.
        rto_s: final RTO.
        delivery_time_s: when the receiver had delivered the whole payload in order
            (the arrival of the last missing packet); 0.0 for an empty payload.
        sender_done_s: when the sender held an ACK for every packet (≥ delivery_time_s).
        goodput_bps: ``N · 8 / delivery_time_s``; 0.0 for an empty payload.
        delivered_at_s: per packet, its in-order delivery time (float64, non-decreasing).
        arrived_at_s: per packet, when its first copy arrived (float64).
        acked_at_s: per packet, when the sender first held an acknowledgement for it
            (cumulative or selective), float64.
        packet_transmissions: per packet, how many times it was handed to the data path
            (int64, ≥ 1).

    The arrays are read-only and left out of ``==``.
    """

    payload_bytes: int = attrs.field(validator=_counts)
    packets: int = attrs.field(validator=_counts)
    payload_per_packet: int = attrs.field(validator=_counts)
    window_packets: int = attrs.field(validator=_counts)
    transmissions: int = attrs.field(validator=_counts)
    retransmissions: int = attrs.field(validator=_counts)
    timeouts: int = attrs.field(validator=_counts)
    fast_retransmits: int = attrs.field(validator=_counts)
    queue_drops: int = attrs.field(validator=_counts)
    wire_losses: int = attrs.field(validator=_counts)
    duplicates: int = attrs.field(validator=_counts)
    wire_bytes: int = attrs.field(validator=_counts)
    acks_sent: int = attrs.field(validator=_counts)
    acks_lost: int = attrs.field(validator=_counts)
    rtt_samples: int = attrs.field(validator=_counts)
    srtt_s: float | None = attrs.field(validator=attrs.validators.optional(_seconds_ok))
    rto_s: float = attrs.field(validator=_seconds_ok)
    delivery_time_s: float = attrs.field(validator=_seconds_ok)
    sender_done_s: float = attrs.field(validator=_seconds_ok)
    goodput_bps: float = attrs.field(validator=_seconds_ok)
    delivered_at_s: np.ndarray = attrs.field(eq=False, repr=False, validator=_array)
    arrived_at_s: np.ndarray = attrs.field(eq=False, repr=False, validator=_array)
    acked_at_s: np.ndarray = attrs.field(eq=False, repr=False, validator=_array)
    packet_transmissions: np.ndarray = attrs.field(eq=False, repr=False, validator=_array)

    @property
    def transmissions_per_packet(self) -> float:
        """``transmissions / packets`` (0.0 for an empty payload); ``1 / (1 − p)`` on average
        under independent data loss ``p`` with a loss-free, FIFO reverse path."""
        return self.transmissions / self.packets if self.packets else 0.0

    def time_delivered(self, nbytes):
        """When the first ``nbytes`` payload bytes had all been delivered in order, seconds.

        That is the delivery time of the packet holding byte ``nbytes − 1``:
        ``delivered_at_s[ceil(nbytes / payload_per_packet) − 1]``; 0.0 for ``nbytes = 0``.
        A receiver can start decoding a chunk that ends at byte offset ``X`` (exclusive)
        at ``time_delivered(X)``. Accepts an int or an integer array (returns an array).

        Raises:
            ValueError: ``nbytes`` is negative or larger than the payload.
            TypeError: ``nbytes`` is not an integer or an integer array.
        """
        values = np.asarray(nbytes)
        if values.dtype.kind not in "iu" or isinstance(nbytes, bool):
            raise TypeError(f"nbytes must be an integer number of bytes, got {nbytes!r}")
        if (values < 0).any() or (values > self.payload_bytes).any():
            raise ValueError(f"nbytes must lie in 0 .. {self.payload_bytes} bytes, got {nbytes!r}")
        index = -(-values // max(self.payload_per_packet, 1)) - 1
        times = np.where(values > 0, self.delivered_at_s[np.maximum(index, 0)] if self.packets else 0.0, 0.0)
        return float(times) if times.ndim == 0 else times


def simulate_arq(
    channel: Channel | Link,
    nbytes: int,
    *,
    config: ArqConfig | None = None,
    seed: int | np.random.SeedSequence | None = 0,
) -> ArqResult:
    """Send ``nbytes`` of payload reliably over ``channel`` with selective-repeat ARQ.

    Args:
        channel: the channel (a bare :class:`Link` is a lossless channel).
        nbytes: payload size in bytes, ≥ 0.
        config: ARQ parameters; ``None`` for the defaults of :class:`ArqConfig`.
        seed: seeds the channel's random streams (:meth:`Channel.open`); the same seed,
            channel and config give the same result. ``None`` takes fresh entropy from the OS.

    Returns:
        The :class:`ArqResult`.

    Raises:
        TypeError: ``channel`` is not a Channel or Link, ``nbytes`` is not an integer, or
            ``config`` is not an ArqConfig.
        ValueError: ``nbytes`` is negative.
        TransferAborted: a packet needed more than ``config.max_transmissions``
            transmissions.
    """
    if isinstance(channel, Link):
        channel = Channel(channel)
    if not isinstance(channel, Channel):
        raise TypeError(f"channel must be a Channel or a Link, got {type(channel).__name__}")
    config = ArqConfig() if config is None else config
    if not isinstance(config, ArqConfig):
        raise TypeError(f"config must be an ArqConfig, got {type(config).__name__}")
    link = channel.link
    n = link.packet_count(nbytes)
    nbytes = int(nbytes)
    window = config.window_for(channel)
    rto = RtoEstimator(config.initial_rto_s, config.min_rto_s, config.max_rto_s, config.clock_granularity_s)
    if n == 0:
        empty = _readonly([], np.float64)
        return ArqResult(
            payload_bytes=0, packets=0, payload_per_packet=link.payload_per_packet, window_packets=window,
            transmissions=0, retransmissions=0, timeouts=0, fast_retransmits=0, queue_drops=0, wire_losses=0,
            duplicates=0, wire_bytes=0, acks_sent=0, acks_lost=0, rtt_samples=0, srtt_s=None, rto_s=rto.rto_s,
            delivery_time_s=0.0, sender_done_s=0.0, goodput_bps=0.0, delivered_at_s=empty, arrived_at_s=empty,
            acked_at_s=empty,
            packet_transmissions=_readonly([], np.int64),
        )
    data_path, ack_path = channel.open(seed)
    loop = _Loop(n, link.mtu_bytes, link.last_packet_payload(nbytes) + link.header_bytes, config.ack_size(link),
                 window, config, rto, data_path.send, ack_path.send)
    loop.run()
    delivered = _readonly(loop.delivered_at, np.float64)
    delivery_time_s = float(delivered[-1])
    return ArqResult(
        payload_bytes=nbytes,
        packets=n,
        payload_per_packet=link.payload_per_packet,
        window_packets=window,
        transmissions=loop.transmissions,
        retransmissions=loop.transmissions - n,
        timeouts=loop.timeouts,
        fast_retransmits=loop.fast_retransmits,
        queue_drops=data_path.queue_drops,
        wire_losses=data_path.wire_losses,
        duplicates=loop.duplicates,
        wire_bytes=data_path.serialized_bytes,
        acks_sent=ack_path.handed,
        acks_lost=ack_path.wire_losses,
        rtt_samples=rto.samples,
        srtt_s=rto.srtt_s,
        rto_s=rto.rto_s,
        delivery_time_s=delivery_time_s,
        sender_done_s=loop.sender_done_s,
        goodput_bps=nbytes * 8 / delivery_time_s if delivery_time_s > 0.0 else 0.0,
        delivered_at_s=delivered,
        arrived_at_s=_readonly(loop.arrived_at, np.float64),
        acked_at_s=_readonly(loop.acked_at, np.float64),
        packet_transmissions=_readonly(loop.tx_count, np.int64),
    )


def _find(parent: list, x: int) -> int:
    """Root of ``x`` in a union-find forest stored as a parent list, with path compression."""
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        parent[x], x = root, parent[x]
    return root


class _Loop:
    """The sender, the receiver and the event loop of one run (see the module docstring).

    Written for speed: state in flat lists indexed by sequence number, hot names bound to
    locals. Runs of received packets (receiver) and the next unacknowledged packet
    (sender) are union-find forests, so SACK blocks cost amortized O(1) per packet however
    long they grow. Transmission times grow with transmission order, so the packet whose
    timer expires first is always the oldest live transmission: one timer check is kept
    in the heap, for the front of the FIFO of live transmissions.
    """

    def __init__(self, n, full_wire, last_wire, ack_bytes, window, config: ArqConfig, rto: RtoEstimator,
                 send_data, send_ack):
        self.n, self.full_wire, self.last_wire, self.ack_bytes, self.window = n, full_wire, last_wire, ack_bytes, window
        self.config, self.rto = config, rto
        self.send_data, self.send_ack = send_data, send_ack
        # sender, per packet
        self.acked = bytearray(n)
        self.tx_count = [0] * n
        self.last_tx = [0] * n      # id of the packet's latest transmission
        self.sent_at = [0.0] * n    # time of the packet's latest transmission
        self.level_of = [0] * n     # RTO backoff level when the packet was last transmitted
        self.acked_at = [0.0] * n
        # receiver, per packet
        self.received = bytearray(n)
        self.arrived_at = [math.nan] * n
        self.delivered_at = [0.0] * n
        # counters
        self.transmissions = self.timeouts = self.fast_retransmits = self.duplicates = 0
        self.sender_done_s = 0.0
        self.heap: list = []
        self.live: deque = deque()         # (transmission id, seq) in transmission order, for the timer
        self.outstanding: deque = deque()  # the same, for SACK loss detection
        self.dupthresh = config.dupthresh or 0
        # the one live timer check: its time, the RTO it was computed with, its generation
        # (checks of older generations still in the heap are ignored)
        self.timer_armed = False
        self.timer_at = self.timer_rto = 0.0
        self.timer_generation = 0
        self._ticks = itertools.count()

    def arm(self, at: float) -> None:
        """Make the timer check at ``at`` (seconds) the live one."""
        self.timer_armed = True
        self.timer_at, self.timer_rto = at, self.rto.rto_s
        self.timer_generation += 1
        heapq.heappush(self.heap, (at, next(self._ticks), _TIMER, self.timer_generation, None))

    def transmit(self, seq: int, now: float) -> None:
        """Hand packet ``seq`` to the data path at ``now``; arm the timer check if none is."""
        count = self.tx_count[seq] + 1
        if count > self.config.max_transmissions:
            raise TransferAborted(
                f"packet {seq} was not acknowledged after {self.config.max_transmissions} transmissions "
                f"(ArqConfig.max_transmissions): the channel loses too much, or round trips with queueing "
                f"exceed max_rto_s (a window too large for the link's slowest rate)"
            )
        self.tx_count[seq] = count
        self.transmissions += 1
        tx = self.transmissions
        self.last_tx[seq] = tx
        self.sent_at[seq] = now
        self.level_of[seq] = self.rto.backoff_level
        arrival = self.send_data(now, self.full_wire if seq != self.n - 1 else self.last_wire)
        if arrival is not None:
            heapq.heappush(self.heap, (arrival, next(self._ticks), _DATA, seq, None))
        self.live.append((tx, seq))
        if self.dupthresh:
            self.outstanding.append((tx, seq))
        if not self.timer_armed:
            self.arm(now + self.rto.rto_s)

    def run(self) -> None:
        n, window, dupthresh, blocks_max = self.n, self.window, self.dupthresh, self.config.sack_blocks
        find, ticks = _find, self._ticks
        heap, pop, push = self.heap, heapq.heappop, heapq.heappush
        acked, received, tx_count, last_tx, sent_at = self.acked, self.received, self.tx_count, self.last_tx, self.sent_at
        acked_at, level_of, live, outstanding = self.acked_at, self.level_of, self.live, self.outstanding
        arrived_at, delivered_at = self.arrived_at, self.delivered_at
        transmit, send_ack, ack_bytes, rto, arm = self.transmit, self.send_ack, self.ack_bytes, self.rto, self.arm
        sample = rto.update
        # receiver: runs of received packets; run_start[x] / run_end[x] lead to the run's ends
        run_start, run_end = list(range(n)), list(range(n))
        reported: list[int] = []  # one member of each SACK block of the last ACK, most recent first
        rcv_next = 0
        # sender: next_unacked[i] leads to the lowest unacknowledged packet >= i (n: none)
        next_unacked = list(range(n + 1))
        next_new = snd_una = cum_seen = 0
        unacked = n
        evidence = 0  # highest transmission id known delivered (from packets sent once)
        progress = 0.0  # when an ACK last acknowledged new data (RFC 6298 §5.3)

        while next_new < n and next_new < snd_una + window:
            transmit(next_new, 0.0)
            next_new += 1
        while True:
            now, _, kind, seq, info = pop(heap)
            if kind == _DATA:  # a data packet arrives at the receiver
                if received[seq]:
                    self.duplicates += 1
                else:
                    received[seq] = 1
                    arrived_at[seq] = now
                    if seq > 0 and received[seq - 1]:
                        run_start[seq] = seq - 1
                        run_end[seq - 1] = seq
                    if seq + 1 < n and received[seq + 1]:
                        run_start[seq + 1] = seq
                        run_end[seq] = seq + 1
                    if seq == rcv_next:
                        while rcv_next < n and received[rcv_next]:
                            delivered_at[rcv_next] = now
                            rcv_next += 1
                # SACK blocks (RFC 2018): the block holding this packet first, then the blocks
                # of the previous ACK that are still above cum and distinct, up to blocks_max.
                if seq < rcv_next and not reported:
                    blocks = ()
                else:
                    members, starts = [], []
                    for member in ([seq] if seq >= rcv_next else []) + reported:
                        if member >= rcv_next:
                            start = find(run_start, member)
                            if start not in starts:
                                members.append(member)
                                starts.append(start)
                                if len(members) == blocks_max:
                                    break
                    reported = members
                    blocks = tuple((start, find(run_end, member)) for start, member in zip(starts, members))
                arrival = send_ack(now, ack_bytes)
                if arrival is not None:
                    push(heap, (arrival, next(ticks), _ACK, seq, (rcv_next, blocks)))
            elif kind == _ACK:  # an ACK for packet seq arrives at the sender: info = (cum, blocks)
                cum, blocks = info
                seen, before = evidence, unacked
                if not acked[seq] and tx_count[seq] == 1:  # Karn: sample only packets sent once
                    sample(now - sent_at[seq])
                if cum == cum_seen + 1 and not blocks and not acked[cum_seen]:  # the common in-order case
                    acked[cum_seen] = 1
                    acked_at[cum_seen] = now
                    unacked -= 1
                    next_unacked[cum_seen] = cum
                    if tx_count[cum_seen] == 1 and last_tx[cum_seen] > seen:
                        seen = last_tx[cum_seen]
                    cum_seen = cum
                    ranges = ()
                elif cum > cum_seen:
                    ranges = ((cum_seen, cum - 1),) + blocks
                    cum_seen = cum
                else:
                    ranges = blocks
                for low, high in ranges:
                    i = find(next_unacked, low)
                    while i <= high:
                        acked[i] = 1
                        acked_at[i] = now
                        unacked -= 1
                        next_unacked[i] = i + 1
                        if tx_count[i] == 1 and last_tx[i] > seen:
                            seen = last_tx[i]
                        i = find(next_unacked, i + 1)
                if not unacked:
                    self.sender_done_s = now
                    return
                if unacked < before:
                    progress = now
                if rto.rto_s < self.timer_rto and self.timer_armed:  # a smaller RTO may bring the check forward
                    while live and (acked[live[0][1]] or last_tx[live[0][1]] != live[0][0]):
                        live.popleft()
                    if live:
                        sent = sent_at[live[0][1]]
                        deadline = (sent if sent > progress else progress) + rto.rto_s
                        if deadline < self.timer_at:
                            arm(deadline)
                snd_una = find(next_unacked, snd_una)
                if dupthresh and seen > evidence:
                    evidence = seen
                    limit = seen - dupthresh
                    while outstanding and outstanding[0][0] <= limit:
                        lost_tx, lost = outstanding.popleft()
                        if last_tx[lost] == lost_tx and not acked[lost]:
                            self.fast_retransmits += 1
                            transmit(lost, now)
                while next_new < n and next_new < snd_una + window:
                    transmit(next_new, now)
                    next_new += 1
            elif seq == self.timer_generation:  # the timer check: packet i expires at max(sent_at[i], progress) + RTO
                while live and (acked[live[0][1]] or last_tx[live[0][1]] != live[0][0]):
                    live.popleft()
                if not live:
                    self.timer_armed = False
                    continue
                timer = rto.rto_s
                sent = sent_at[live[0][1]]
                deadline = (sent if sent > progress else progress) + timer
                if deadline <= now:  # expired: retransmit every packet whose timer has expired
                    expired, back_off = [], False
                    while live:
                        tx, seq = live[0]
                        if acked[seq] or last_tx[seq] != tx:
                            live.popleft()
                            continue
                        sent = sent_at[seq]
                        if (sent if sent > progress else progress) + timer > now:
                            break
                        live.popleft()
                        expired.append(seq)
                        back_off = back_off or level_of[seq] == rto.backoff_level
                    if back_off:  # once per timeout event (RFC 6298 §5.5)
                        rto.backoff()
                    self.timeouts += len(expired)
                    for seq in expired:
                        transmit(seq, now)
                    sent = sent_at[live[0][1]]
                    deadline = (sent if sent > progress else progress) + rto.rto_s
                arm(deadline)
