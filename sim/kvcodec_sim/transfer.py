"""Simulate sending one payload over a :class:`~kvcodec_sim.link.Link` with SimPy.

Three parts, as in SimPy's own examples:

* a **sender** process cuts the payload into packets (full packets of
  ``link.payload_per_packet`` payload bytes, then the remainder) and serializes them back to
  back: each packet holds the link for its serialization delay ``wire_bytes * 8 /
  bandwidth_bps`` seconds, then enters the cable;
* a **cable** (:class:`~kvcodec_sim.cable.Cable`) delays every packet by the propagation
  delay ``link.latency_s``; many packets can be in flight at once;
* a **receiver** process takes packets off the cable and records when each arrived.

The simulated delivery time equals :meth:`Link.closed_form_time` up to floating-point
rounding (the sender adds one serialization delay per packet, so the relative difference
grows at most like ``packets * 2**-52``). Loss, jitter, retransmission and competing
traffic are not modelled.
"""

from __future__ import annotations


import attrs
import numpy as np
import simpy

from kvcodec_sim.cable import Cable
from kvcodec_sim.link import Link
from kvcodec_sim.packet import Packet

__all__ = ["TransferResult", "simulate_transfer"]

_count = [attrs.validators.instance_of(int), attrs.validators.ge(0)]
_seconds = [attrs.validators.instance_of(float), attrs.validators.ge(0.0)]
_optional_array = attrs.validators.optional(attrs.validators.instance_of(np.ndarray))


def _readonly(values: list, dtype: type) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    array.flags.writeable = False
    return array


@attrs.frozen
class TransferResult:
    """What happened when one payload crossed a link.

    Attributes:
        payload_bytes: payload size in bytes.
        wire_bytes: bytes put on the wire, headers included.
        packets: number of packets sent.
        delivery_time_s: seconds from the first bit sent until the last bit of the last
            packet arrived; 0.0 for an empty payload.
        first_arrival_s: seconds until the last bit of the first packet arrived; ``None``
            for an empty payload.
        goodput_bps: payload bits per second of delivery time,
            ``payload_bytes * 8 / delivery_time_s``; 0.0 for an empty payload.
        packet_wire_bytes: per packet (in order), its size on the wire in bytes, int64;
            ``None`` unless the simulation was asked to ``record_packets``.
        packet_sent_at_s: per packet, the time in seconds its first bit went onto the
            wire, float64; ``None`` unless recorded.
        packet_arrived_at_s: per packet, the time in seconds its last bit arrived,
            float64; ``None`` unless recorded.

    The per-packet arrays are read-only and are left out of ``==``.

    Raises:
        TypeError, ValueError: at construction, a field has the wrong type or a negative
            value (attrs validators; the message names the field).
    """

    payload_bytes: int = attrs.field(validator=_count)
    wire_bytes: int = attrs.field(validator=_count)
    packets: int = attrs.field(validator=_count)
    delivery_time_s: float = attrs.field(validator=_seconds)
    first_arrival_s: float | None = attrs.field(validator=attrs.validators.optional(_seconds))
    goodput_bps: float = attrs.field(validator=_seconds)
    packet_wire_bytes: np.ndarray | None = attrs.field(default=None, eq=False, validator=_optional_array)
    packet_sent_at_s: np.ndarray | None = attrs.field(default=None, eq=False, validator=_optional_array)
    packet_arrived_at_s: np.ndarray | None = attrs.field(default=None, eq=False, validator=_optional_array)


def _sender(env: simpy.Environment, link: Link, cable: Cable, nbytes: int):
    """Serialize the packets of an ``nbytes`` payload back to back onto ``cable``."""
    packets = link.packet_count(nbytes)
    last_wire_bytes = link.last_packet_payload(nbytes) + link.header_bytes
    for seq in range(packets):
        wire_bytes = link.mtu_bytes if seq < packets - 1 else last_wire_bytes
        sent_at_s = env.now
        yield env.timeout(wire_bytes * 8 / link.bandwidth_bps)  # serialization delay
        cable.put(Packet(seq, wire_bytes, sent_at_s))


def _receiver(env: simpy.Environment, cable: Cable, packets: int):
    """Take ``packets`` packets off ``cable``; return ``[(packet, arrived_at_s), ...]``."""
    arrivals = []
    for _ in range(packets):
        packet = yield cable.get()
        arrivals.append((packet, env.now))
    return arrivals


def simulate_transfer(link: Link, nbytes: int, *, record_packets: bool = False) -> TransferResult:
    """Simulate sending ``nbytes`` of payload over ``link``, starting at time 0.

    Args:
        link: the link.
        nbytes: payload size in bytes, ≥ 0. An empty payload sends no packet.
        record_packets: also return per-packet sizes, send times and arrival times.

    Returns:
        The :class:`TransferResult`.

    Raises:
        TypeError: ``link`` is not a :class:`Link` or ``nbytes`` is not an integer.
        ValueError: ``nbytes`` is negative.
    """
    if not isinstance(link, Link):
        raise TypeError(f"link must be a Link, got {type(link).__name__}")
    packets = link.packet_count(nbytes)
    nbytes = int(nbytes)
    env = simpy.Environment(initial_time=0.0)
    cable = Cable(env, link.latency_s)
    env.process(_sender(env, link, cable, nbytes))
    arrivals = env.run(until=env.process(_receiver(env, cable, packets)))

    delivery_time_s = arrivals[-1][1] if arrivals else 0.0
    result = dict(
        payload_bytes=nbytes,
        wire_bytes=sum(packet.wire_bytes for packet, _ in arrivals),
        packets=len(arrivals),
        delivery_time_s=delivery_time_s,
        first_arrival_s=arrivals[0][1] if arrivals else None,
        goodput_bps=nbytes * 8 / delivery_time_s if delivery_time_s > 0.0 else 0.0,
    )
    if record_packets:
        result.update(
            packet_wire_bytes=_readonly([packet.wire_bytes for packet, _ in arrivals], np.int64),
            packet_sent_at_s=_readonly([packet.sent_at_s for packet, _ in arrivals], np.float64),
            packet_arrived_at_s=_readonly([arrived_at_s for _, arrived_at_s in arrivals], np.float64),
        )
    return TransferResult(**result)
