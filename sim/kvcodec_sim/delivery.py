"""In-order delivery of one byte stream over a channel: when each byte reached the receiver
and when the sender learnt of it.

:func:`deliver` runs the selective-repeat ARQ of ``arq.py`` (``specs/link-model.md`` §9)
or, when nothing can be lost or delayed irregularly, computes the same schedule without an
event loop (``specs/streaming.md`` §4.1):

* a channel with no random loss, no queue limit and no jitter, and an ARQ window left to
  :meth:`~kvcodec_sim.arq.ArqConfig.auto_window` (twice the bandwidth-delay product at
  the highest rate, so the serializer never waits for an ACK): the data path serializes
  the packets back to back from time 0 — ``end_i = end_{i−1} + wire_i · 8 / rate``, or
  ``trace.finish_time(end_{i−1}, wire_i · 8)`` with a trace — and packet ``i`` arrives at
  ``end_i + latency``; its ACK leaves at once, is serialized at the link bandwidth behind
  earlier ACKs and arrives ``latency`` later. That is exactly what :func:`simulate_arq`
  computes on such a channel (the tests check it), in a fraction of the time.

:class:`LosslessPipe` evaluates the same closed form for many stream lengths at once
(the hindsight search of ``adapt.py`` tries thousands).
"""

from __future__ import annotations

import attrs
import numpy as np

from kvcodec_sim.arq import ArqConfig, ArqResult, simulate_arq
from kvcodec_sim.channel import Channel
from kvcodec_sim.link import Link

__all__ = ["Delivery", "LosslessPipe", "deliver", "has_closed_form"]


def has_closed_form(channel: Channel, config: ArqConfig | None = None) -> bool:
    """Whether :func:`deliver` computes ``channel`` in closed form (see the module docstring)."""
    config = config or ArqConfig()
    return channel.is_lossless and channel.jitter.mean_s == 0.0 and config.window_packets is None


def _readonly(values, dtype) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    array.flags.writeable = False
    return array


@attrs.frozen
class Delivery:
    """When the bytes of one stream were delivered and acknowledged.

    Times in seconds from the first transmission (0). Per-packet arrays are read-only.

    Attributes:
        payload_bytes: stream length ``N``.
        payload_per_packet: ``P = mtu − header``.
        window_packets: the ARQ window ``W``.
        delivered_at_s: per packet, in-order delivery time at the receiver.
        acked_at_s: per packet, when the sender first held an acknowledgement for it.
        transmissions: data packets handed to the path (retransmissions included).
        closed_form: computed without the event loop.
        arq: the :class:`ArqResult` when the ARQ ran, else ``None``.
    """

    payload_bytes: int
    payload_per_packet: int
    window_packets: int
    delivered_at_s: np.ndarray = attrs.field(eq=False, repr=False)
    acked_at_s: np.ndarray = attrs.field(eq=False, repr=False)
    transmissions: int
    closed_form: bool
    arq: ArqResult | None = attrs.field(default=None, eq=False, repr=False)
    _cum_acked: np.ndarray = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        cum = np.maximum.accumulate(self.acked_at_s) if len(self.acked_at_s) else np.zeros(0)
        object.__setattr__(self, "_cum_acked", _readonly(cum, np.float64))

    @property
    def packets(self) -> int:
        return len(self.delivered_at_s)

    @property
    def retransmissions(self) -> int:
        return self.transmissions - self.packets

    @property
    def delivery_time_s(self) -> float:
        """When the whole stream had been delivered (0.0 for an empty stream)."""
        return float(self.delivered_at_s[-1]) if self.packets else 0.0

    @property
    def goodput_bps(self) -> float:
        """``N · 8 / delivery_time_s`` (0.0 for an empty stream)."""
        t = self.delivery_time_s
        return self.payload_bytes * 8 / t if t > 0 else 0.0

    @property
    def transmissions_per_packet(self) -> float:
        return self.transmissions / self.packets if self.packets else 0.0

    def _packet(self, nbytes: int) -> int:
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)):
            raise TypeError(f"nbytes must be an integer number of bytes, got {nbytes!r}")
        if not 0 <= nbytes <= self.payload_bytes:
            raise ValueError(f"nbytes must lie in 0 .. {self.payload_bytes} bytes, got {nbytes!r}")
        return -(-int(nbytes) // self.payload_per_packet) - 1  # packet holding byte nbytes−1; −1 for 0

    def time_delivered(self, nbytes: int) -> float:
        """When bytes ``[0, nbytes)`` had all been delivered in order (0.0 for 0 bytes)."""
        p = self._packet(nbytes)
        return float(self.delivered_at_s[p]) if p >= 0 else 0.0

    def time_acked(self, nbytes: int) -> float:
        """When the sender held acknowledgements for every byte of ``[0, nbytes)``."""
        p = self._packet(nbytes)
        return float(self._cum_acked[p]) if p >= 0 else 0.0

    def acked_bytes(self, time_s: float) -> int:
        """Bytes the sender knew to be delivered in order at ``time_s`` (cumulative
        acknowledgements: whole packets, at most ``N``)."""
        full = int(np.searchsorted(self._cum_acked, time_s, side="right"))
        return min(full * self.payload_per_packet, self.payload_bytes)

    def time_handed_over(self, offset: int) -> float:
        """When the packet holding byte ``offset`` was first handed to the data path: 0 for
        the first ``W`` packets, else when packets ``0 … p−W`` had all been acknowledged
        (the window opened for it). This is when the sender needs that byte."""
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or not 0 <= offset < self.payload_bytes:
            raise ValueError(f"offset must lie in 0 .. {self.payload_bytes - 1}, got {offset!r}")
        p = int(offset) // self.payload_per_packet
        return 0.0 if p < self.window_packets else float(self._cum_acked[p - self.window_packets])


class LosslessPipe:
    """The closed form of :func:`deliver` for streams of up to ``max_bytes`` bytes over
    ``channel`` (which must satisfy :func:`has_closed_form`).

    The serializer's finish times of a stream of ``max_bytes`` bytes are computed once;
    a shorter stream shares them except for its last, shorter packet, whose finish time
    is computed on demand exactly as the data path would.
    """

    def __init__(self, channel: Channel | Link, max_bytes: int, config: ArqConfig | None = None):
        channel = Channel(channel) if isinstance(channel, Link) else channel
        if not has_closed_form(channel, config):
            raise ValueError("LosslessPipe needs a channel without loss, queue limit or jitter and an automatic window")
        self.channel = channel
        self.config = config or ArqConfig()
        link = channel.link
        self.payload_per_packet = link.payload_per_packet
        self.latency_s = link.latency_s
        self.max_bytes = int(max_bytes)
        n = link.packet_count(self.max_bytes)
        wire_bits = np.full(n, link.mtu_bytes * 8, dtype=np.float64)
        if n:
            wire_bits[-1] = (link.last_packet_payload(self.max_bytes) + link.header_bytes) * 8
        if channel.trace is None:
            self._rate = link.bandwidth_bps
            self.ends_s = np.cumsum(wire_bits / self._rate)  # sequential sums, as the path's busy_until
        else:
            self._rate = None
            ends, end = np.empty(n), 0.0
            finish = channel.trace.finish_time
            for i, bits in enumerate(wire_bits.tolist()):
                end = finish(end, bits)
                ends[i] = end
            self.ends_s = ends

    def _last_end(self, total: int) -> float:
        link = self.channel.link
        n = link.packet_count(total)
        prev = float(self.ends_s[n - 2]) if n >= 2 else 0.0
        bits = (link.last_packet_payload(total) + link.header_bytes) * 8
        if self._rate is not None:
            return prev + bits / self._rate
        return self.channel.trace.finish_time(prev, bits)

    def time_delivered(self, nbytes: int, total: int) -> float:
        """When bytes ``[0, nbytes)`` of a stream of ``total`` bytes had been delivered."""
        if not 0 <= nbytes <= total <= self.max_bytes:
            raise ValueError(f"need 0 <= nbytes {nbytes} <= total {total} <= {self.max_bytes}")
        if nbytes == 0:
            return 0.0
        p = -(-nbytes // self.payload_per_packet) - 1
        last = -(-total // self.payload_per_packet) - 1
        end = self._last_end(total) if p == last else float(self.ends_s[p])
        return end + self.latency_s

    def deliver(self, total: int) -> Delivery:
        """The full :class:`Delivery` of a stream of ``total`` bytes."""
        link = self.channel.link
        n = link.packet_count(total)
        ends = np.array(self.ends_s[:n], dtype=np.float64)
        if n:
            ends[-1] = self._last_end(total)
        arrivals = ends + self.latency_s
        ack_s = self.config.ack_size(link) * 8 / link.bandwidth_bps
        # ACK path: FIFO serializer at the link bandwidth, each ACK leaving as its packet arrives
        acks, busy = np.empty(n), 0.0
        for i, a in enumerate(arrivals.tolist()):
            busy = (busy if busy > a else a) + ack_s
            acks[i] = busy + self.latency_s
        return Delivery(
            payload_bytes=int(total),
            payload_per_packet=self.payload_per_packet,
            window_packets=self.config.window_for(self.channel),
            delivered_at_s=_readonly(arrivals, np.float64),
            acked_at_s=_readonly(acks, np.float64),
            transmissions=n,
            closed_form=True,
        )


def deliver(channel: Channel | Link, nbytes: int, *, config: ArqConfig | None = None,
            seed: int | np.random.SeedSequence | None = 0) -> Delivery:
    """Send a stream of ``nbytes`` bytes over ``channel`` reliably (closed form or ARQ, see
    the module docstring) and return its :class:`Delivery`.

    Raises:
        TypeError, ValueError: as :func:`simulate_arq`.
        TransferAborted: as :func:`simulate_arq`.
    """
    if isinstance(channel, Link):
        channel = Channel(channel)
    if has_closed_form(channel, config):
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)):
            raise TypeError(f"payload size must be an integer number of bytes, got {nbytes!r}")
        if nbytes < 0:
            raise ValueError(f"payload size must be >= 0 bytes, got {nbytes!r}")
        return LosslessPipe(channel, int(nbytes), config).deliver(int(nbytes))
    result = simulate_arq(channel, nbytes, config=config, seed=seed)
    return Delivery(
        payload_bytes=result.payload_bytes,
        payload_per_packet=result.payload_per_packet,
        window_packets=result.window_packets,
        delivered_at_s=result.delivered_at_s,
        acked_at_s=result.acked_at_s,
        transmissions=result.transmissions,
        closed_form=False,
        arq=result,
    )

