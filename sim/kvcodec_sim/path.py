"""One direction of a channel: bottleneck queue → serializer → wire (loss, propagation, jitter).

A packet handed to a :class:`Path` at time ``now``:

1. **Queue.** Serialization would start at ``start = max(now, busy_until)`` (FIFO, the
   serializer finishes one packet before starting the next). If ``start > now`` the packet
   must wait; a drop-tail :class:`~kvcodec_sim.queue.DropTailQueue`, if any, drops it when
   full. Dropped packets use no link time.
2. **Serializer.** It occupies the link until ``end = start + wire_bytes · 8 / rate`` at a
   constant rate, or ``end = trace.finish_time(start, wire_bytes · 8)`` with a
   :class:`~kvcodec_sim.trace.BandwidthTrace`.
3. **Wire.** The loss model decides (one draw per serialized packet, in order) whether
   the packet is lost on the wire; a lost packet still used its serialization time. With
   ``slot_s`` set (the channel's ``ge-clock=time``), the loss model is first told how many
   whole slots of ``slot_s`` seconds the link stood idle since the previous packet's
   serialization ended (``floor(idle / slot_s)``, not for a direction's first packet),
   so that a bursty model's state evolves with time, not only with packets sent.
4. **Propagation.** A delivered packet's last bit arrives at ``end + latency_s + jitter``
   (one jitter draw per delivered packet, in order). On a FIFO path the arrival is
   raised to the previous delivered packet's arrival if it would overtake it; with
   ``reorder=True`` it is not.

All of this is computed when the packet is handed over (the schedule of a FIFO
serializer is known then), so a path costs no simulation events of its own: the caller
schedules one event for the arrival, if any. Calls must come in non-decreasing ``now``.
"""

from __future__ import annotations

import math
from typing import Iterator

from kvcodec_sim.queue import DropTailQueue, QueueLimit
from kvcodec_sim.trace import BandwidthTrace

__all__ = ["Path"]


class Path:
    """One direction of a channel during one run (see the module docstring).

    Args:
        rate: serialization rate in bit/s (> 0), or a bandwidth trace.
        latency_s: minimum one-way propagation delay in seconds (≥ 0).
        losses: iterator of per-packet loss decisions (``LossModel.losses``), or ``None``
            for no loss.
        delays: iterator of per-packet extra delays in seconds (``Jitter.delays``), or
            ``None`` for no jitter.
        reorder: let jittered packets overtake one another (default: FIFO).
        queue: capacity of the bottleneck queue, or ``None`` for unlimited.
        slot_s: duration in seconds of one idle slot of the loss model's clock (one MTU at
            the nominal bandwidth), or ``None`` (default) for a clock that advances only per
            packet sent.

    Counters (read them after the run): ``handed`` packets handed over, ``queue_drops``,
    ``serialized`` packets and ``serialized_bytes`` wire bytes put on the wire (lost ones
    included), ``wire_losses`` packets lost on the wire, ``delivered``.
    """

    def __init__(
        self,
        rate: float | BandwidthTrace,
        latency_s: float,
        losses: Iterator[bool] | None = None,
        delays: Iterator[float] | None = None,
        reorder: bool = False,
        queue: QueueLimit | None = None,
        slot_s: float | None = None,
    ):
        if isinstance(rate, BandwidthTrace):
            self._trace, self._rate_bps = rate, None
        else:
            self._trace, self._rate_bps = None, float(rate)
        self.latency_s = float(latency_s)
        self._losses = losses
        self._delays = delays
        self._reorder = reorder
        self._queue = DropTailQueue(queue) if queue is not None else None
        if slot_s is not None and not (isinstance(slot_s, (int, float)) and not isinstance(slot_s, bool)
                                       and math.isfinite(slot_s) and slot_s > 0):
            raise ValueError(f"slot_s must be a finite number of seconds > 0, got {slot_s!r}")
        self._slot_s = None if slot_s is None else float(slot_s)
        self.busy_until_s = 0.0
        self._last_arrival_s = 0.0
        self.handed = 0
        self.serialized = 0
        self.serialized_bytes = 0
        self.wire_losses = 0
        self.delivered = 0

    @property
    def queue_drops(self) -> int:
        """Packets dropped by the bottleneck queue."""
        return self._queue.drops if self._queue is not None else 0

    def send(self, now_s: float, wire_bytes: int) -> float | None:
        """Hand over a packet of ``wire_bytes`` bytes at ``now_s`` seconds.

        Returns:
            The time in seconds its last bit arrives at the far end, or ``None`` if it was
            dropped by the queue or lost on the wire.
        """
        self.handed += 1
        start = self.busy_until_s if self.busy_until_s > now_s else now_s
        if self._queue is not None and not self._queue.offer(now_s, start, wire_bytes):
            return None
        if self._trace is None:
            end = start + wire_bytes * 8 / self._rate_bps
        else:
            end = self._trace.finish_time(start, wire_bytes * 8)
        idle_since, self.busy_until_s = self.busy_until_s, end
        if self._losses is not None:
            idle_slots = 0
            if self._slot_s is not None and self.serialized and start > idle_since:
                # a relative tolerance so that an idle of exactly n slots counts n despite rounding
                idle_slots = int((start - idle_since) / self._slot_s * (1.0 + 1e-9))
            lost = self._losses.send(idle_slots) if idle_slots else next(self._losses)
        self.serialized += 1
        self.serialized_bytes += wire_bytes
        if self._losses is not None and lost:
            self.wire_losses += 1
            return None
        arrival = end + self.latency_s
        if self._delays is not None:
            arrival += next(self._delays)
            if not self._reorder and arrival < self._last_arrival_s:
                arrival = self._last_arrival_s
        self._last_arrival_s = arrival
        self.delivered += 1
        return arrival
