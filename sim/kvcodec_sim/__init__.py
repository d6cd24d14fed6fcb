"""kvcodec_sim: a SimPy model of the network link a compressed KV cache crosses.

Depends only on the standard library, attrs, SimPy and NumPy (never on torch,
transformers or kvcodec), so it can run on its own. The model is specified in
``specs/link-model.md``.

    >>> from kvcodec_sim import Link, simulate_transfer
    >>> link = Link.parse("100Mbps", latency="10ms")
    >>> link.packet_count(1_000_000)
    685
    >>> round(simulate_transfer(link, 1_000_000).delivery_time_s, 6)
    0.092192
"""

from kvcodec_sim.cable import Cable
from kvcodec_sim.errors import LinkSpecError
from kvcodec_sim.link import Link
from kvcodec_sim.packet import Packet
from kvcodec_sim.transfer import TransferResult, simulate_transfer
from kvcodec_sim.units import parse_bandwidth, parse_duration, parse_size

__all__ = [
    "Cable",
    "Link",
    "LinkSpecError",
    "Packet",
    "TransferResult",
    "parse_bandwidth",
    "parse_duration",
    "parse_size",
    "simulate_transfer",
]
