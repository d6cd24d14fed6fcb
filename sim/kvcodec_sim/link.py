"""A point-to-point network link: bandwidth, propagation delay, MTU and header overhead.

A payload of ``N`` bytes is cut into packets that carry up to ``mtu_bytes - header_bytes``
payload bytes each; every packet also carries ``header_bytes`` of headers. The sender
serializes packets back to back at ``bandwidth_bps``; each packet then takes
``latency_s`` to propagate. With no loss and no competing traffic, the last bit of the
last packet arrives at::

    wire_bytes(N) * 8 / bandwidth_bps + latency_s        (N > 0; 0 for N == 0)

The full rules are in ``specs/link-model.md``.
"""

from __future__ import annotations

import math
import numbers

import attrs

from kvcodec_sim.errors import LinkSpecError
from kvcodec_sim.units import parse_bandwidth, parse_duration, parse_size

__all__ = ["Link"]


def _real(field: str):
    """A converter to float for ``field``; a bool or a non-real value raises TypeError naming ``field``."""

    def convert(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{field} must be a real number, got {type(value).__name__} {value!r}")
        return float(value)

    return convert


def _integer(field: str):
    """A converter to int for ``field``; a bool or a non-integer raises TypeError naming ``field``."""

    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{field} must be an integer, got {type(value).__name__} {value!r}")
        return int(value)

    return convert


def _check_bandwidth(_inst: "Link", attribute: attrs.Attribute, value: float) -> None:
    if not (math.isfinite(value) and value > 0.0):
        raise LinkSpecError(f"{attribute.name} must be a finite number of bit/s > 0, got {value!r}")


def _check_latency(_inst: "Link", attribute: attrs.Attribute, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise LinkSpecError(f"{attribute.name} must be a finite number of seconds >= 0, got {value!r}")


def _check_mtu(_inst: "Link", attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise LinkSpecError(f"{attribute.name} must be a number of bytes >= 1, got {value!r}")


def _check_header(inst: "Link", attribute: attrs.Attribute, value: int) -> None:
    if not 0 <= value < inst.mtu_bytes:
        raise LinkSpecError(
            f"{attribute.name} must be a number of bytes >= 0 and < mtu_bytes={inst.mtu_bytes}, got {value!r}"
        )


def _check_payload_bytes(nbytes: object) -> int:
    """``nbytes`` as an int, after checking it is a whole, non-negative number of bytes.

    Raises:
        TypeError: ``nbytes`` is not an integer (a bool or a float is refused).
        ValueError: ``nbytes`` is negative.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Integral):
        raise TypeError(f"nbytes must be an integer number of bytes, got {type(nbytes).__name__} {nbytes!r}")
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0 bytes, got {nbytes}")
    return int(nbytes)


@attrs.frozen
class Link:
    """A point-to-point link that carries one payload with no loss and no competing traffic.

    Attributes:
        bandwidth_bps: serialization rate in bit/s; finite and > 0.
        latency_s: one-way propagation delay in seconds; finite and ≥ 0. Default 0.
        mtu_bytes: largest packet on the wire in bytes, headers included. Default 1500
            (Ethernet).
        header_bytes: header overhead per packet in bytes, ``0 ≤ header_bytes < mtu_bytes``.
            Default 40 (IPv4 20 + TCP 20, no options).

    Raises:
        TypeError: at construction, a field has the wrong type (``bool`` is refused;
            integers are accepted for the float fields).
        LinkSpecError: at construction, a field is out of its range; the message names
            the field.
    """

    bandwidth_bps: float = attrs.field(converter=_real("bandwidth_bps"), validator=_check_bandwidth)
    latency_s: float = attrs.field(default=0.0, converter=_real("latency_s"), validator=_check_latency)
    mtu_bytes: int = attrs.field(default=1500, converter=_integer("mtu_bytes"), validator=_check_mtu)
    header_bytes: int = attrs.field(default=40, converter=_integer("header_bytes"), validator=_check_header)

    @classmethod
    def parse(
        cls,
        bandwidth: str,
        latency: str | float = 0.0,
        mtu: str | int = 1500,
        header_bytes: str | int = 40,
    ) -> "Link":
        """Build a link from human-written quantities.

        Args:
            bandwidth: e.g. ``"100Mbps"``, ``"1Gbit/s"``, ``"12.5MB/s"`` (see
                :func:`~kvcodec_sim.units.parse_bandwidth`).
            latency: one-way propagation delay: a string such as ``"10ms"`` (see
                :func:`~kvcodec_sim.units.parse_duration`) or a number of seconds.
            mtu: largest packet in bytes, headers included: ``1500`` or ``"9000B"``.
            header_bytes: per-packet header overhead in bytes: ``40`` or ``"52B"``.

        Returns:
            The :class:`Link`.

        Raises:
            TypeError: an argument has the wrong type (``bandwidth`` must be a ``str``).
            LinkSpecError: a string is malformed or a value is out of range.
        """
        return cls(
            bandwidth_bps=parse_bandwidth(bandwidth),
            latency_s=parse_duration(latency) if isinstance(latency, str) else latency,
            mtu_bytes=parse_size(mtu) if isinstance(mtu, str) else mtu,
            header_bytes=parse_size(header_bytes) if isinstance(header_bytes, str) else header_bytes,
        )

    @property
    def payload_per_packet(self) -> int:
        """Payload bytes a full packet carries: ``mtu_bytes - header_bytes`` (≥ 1)."""
        return self.mtu_bytes - self.header_bytes

    def packet_count(self, nbytes: int) -> int:
        """Packets needed to carry ``nbytes`` of payload: ``ceil(nbytes / payload_per_packet)``.

        A 0-byte payload needs 0 packets.

        Raises:
            TypeError: ``nbytes`` is not an integer.
            ValueError: ``nbytes`` is negative.
        """
        nbytes = _check_payload_bytes(nbytes)
        return -(-nbytes // self.payload_per_packet)

    def last_packet_payload(self, nbytes: int) -> int:
        """Payload bytes in the last packet: ``nbytes - (packet_count - 1) * payload_per_packet``.

        It lies in ``1 .. payload_per_packet``; all earlier packets are full. 0 when
        ``nbytes`` is 0 (there is no packet).

        Raises:
            TypeError: ``nbytes`` is not an integer.
            ValueError: ``nbytes`` is negative.
        """
        packets = self.packet_count(nbytes)
        return int(nbytes) - (packets - 1) * self.payload_per_packet if packets else 0

    def wire_bytes(self, nbytes: int) -> int:
        """Bytes on the wire for ``nbytes`` of payload: ``nbytes + packet_count * header_bytes``.

        Raises:
            TypeError: ``nbytes`` is not an integer.
            ValueError: ``nbytes`` is negative.
        """
        packets = self.packet_count(nbytes)
        return int(nbytes) + packets * self.header_bytes

    def serialization_delay(self, nbytes: int) -> float:
        """Seconds to put all packets for ``nbytes`` of payload on the wire back to back:
        ``wire_bytes * 8 / bandwidth_bps``.

        Raises:
            TypeError: ``nbytes`` is not an integer.
            ValueError: ``nbytes`` is negative.
        """
        return self.wire_bytes(nbytes) * 8 / self.bandwidth_bps

    def closed_form_time(self, nbytes: int) -> float:
        """Seconds from the first bit sent until the last bit of ``nbytes`` of payload arrives.

        ``serialization_delay(nbytes) + latency_s`` for ``nbytes > 0``, assuming
        back-to-back serialization, no loss and no competing traffic. A 0-byte payload
        sends no packet, so nothing has to arrive and the time is ``0.0``.

        Raises:
            TypeError: ``nbytes`` is not an integer.
            ValueError: ``nbytes`` is negative.
        """
        if self.packet_count(nbytes) == 0:
            return 0.0
        return self.serialization_delay(nbytes) + self.latency_s
