"""The bottleneck queue: a drop-tail FIFO buffer in front of the link's serializer.

A packet handed to the link while the serializer is busy waits in the queue; when it
arrives to a full queue it is dropped (drop-tail). Capacity counts only *waiting* packets,
not the one being serialized, and can be given in packets, in bytes (wire bytes, headers
included), or both (a packet must fit both). A packet that finds the serializer idle goes
straight onto the wire and is never dropped, even by a queue of capacity 0.

:class:`QueueLimit` is the frozen description (``queue=64kB`` or ``queue=100pkt`` in a
channel spec); :class:`DropTailQueue` tracks the occupancy of one queue during a run.
"""

from __future__ import annotations

import numbers
import re
from collections import deque

import attrs

from kvcodec_sim.errors import LinkSpecError, quoted
from kvcodec_sim.units import parse_size

__all__ = ["DropTailQueue", "QueueLimit"]

_PACKETS_RE = re.compile(r"([0-9]+)[ \t]*(?:pkt|packets?)")


def _optional_count(field: str):
    def convert(value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{field} must be an integer or None, got {type(value).__name__} {value!r}")
        return int(value)

    return convert


def _check_count(_inst, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and value < 0:
        raise LinkSpecError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class QueueLimit:
    """Capacity of a drop-tail bottleneck queue. ``None`` in a field means no limit of that kind.

    Attributes:
        packets: most packets that may wait, ≥ 0, or ``None``.
        bytes: most wire bytes (headers included) that may wait, ≥ 0, or ``None``.

    Raises:
        TypeError: a field is not an integer or ``None``.
        LinkSpecError: a field is negative.
    """

    packets: int | None = attrs.field(default=None, converter=_optional_count("packets"), validator=_check_count)
    bytes: int | None = attrs.field(default=None, converter=_optional_count("bytes"), validator=_check_count)

    @classmethod
    def parse(cls, text: str) -> "QueueLimit":
        """Parse ``"100pkt"`` (also ``100 packets``) or a size in bytes with a ``B`` unit
        (``"64kB"``, ``"1500B"``; grammar of :func:`~kvcodec_sim.units.parse_size`). A bare
        number is refused: it could mean packets or bytes.

        Raises:
            TypeError: ``text`` is not a ``str``.
            LinkSpecError: anything else (one line, with examples).
        """
        if not isinstance(text, str):
            raise TypeError(f"queue capacity must be given as str, got {type(text).__name__}")
        body = text.strip()
        match = _PACKETS_RE.fullmatch(body)
        if match:
            return cls(packets=int(match[1]))
        if body.endswith("B"):
            return cls(bytes=parse_size(body))
        raise LinkSpecError(
            f"invalid queue capacity {quoted(text)}: expected a number of packets or bytes with a unit, "
            "e.g. 100pkt, 64kB, 1500B"
        )

    def admits(self, waiting_packets: int, waiting_bytes: int, wire_bytes: int) -> bool:
        """Whether a packet of ``wire_bytes`` may join ``waiting_packets`` packets of
        ``waiting_bytes`` bytes already waiting."""
        if self.packets is not None and waiting_packets + 1 > self.packets:
            return False
        return self.bytes is None or waiting_bytes + wire_bytes <= self.bytes


class DropTailQueue:
    """Occupancy of one drop-tail queue in front of a FIFO serializer, during one run.

    The serializer's schedule is known when a packet is handed over (FIFO, so its
    serialization starts at ``max(now, when the previous packet finishes)``); a packet is
    *waiting* from the moment it is handed over until its serialization starts. Calls must
    come in non-decreasing ``now``.

    Args:
        limit: the capacity.
    """

    def __init__(self, limit: QueueLimit):
        self.limit = limit
        self._waiting: deque[tuple[float, int]] = deque()  # (serialization start s, wire bytes)
        self.waiting_packets = 0
        self.waiting_bytes = 0
        self.drops = 0

    def offer(self, now_s: float, start_s: float, wire_bytes: int) -> bool:
        """Hand over a packet at ``now_s`` whose serialization would start at ``start_s``.

        Returns ``True`` if it is accepted (it goes straight to the wire when
        ``start_s <= now_s``, else it waits), ``False`` if the queue is full and it is
        dropped (counted in :attr:`drops`).
        """
        waiting = self._waiting
        while waiting and waiting[0][0] <= now_s:
            _, size = waiting.popleft()
            self.waiting_packets -= 1
            self.waiting_bytes -= size
        if start_s <= now_s:
            return True
        if not self.limit.admits(self.waiting_packets, self.waiting_bytes, wire_bytes):
            self.drops += 1
            return False
        waiting.append((start_s, wire_bytes))
        self.waiting_packets += 1
        self.waiting_bytes += wire_bytes
        return True
