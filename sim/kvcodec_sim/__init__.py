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

Over a lossy channel, selective-repeat ARQ delivers every byte:

    >>> from kvcodec_sim import Channel, simulate_arq
    >>> channel = Channel.parse("100Mbps,loss=1%", latency="10ms")
    >>> result = simulate_arq(channel, 1_000_000, seed=1)
    >>> result.packets, result.transmissions >= result.packets
    (685, True)
"""

from kvcodec_sim.arq import ArqConfig, ArqResult, simulate_arq
from kvcodec_sim.cable import Cable
from kvcodec_sim.channel import Channel
from kvcodec_sim.errors import LinkSpecError, TransferAborted
from kvcodec_sim.jitter import ExponentialJitter, Jitter, UniformJitter
from kvcodec_sim.link import Link
from kvcodec_sim.loss import Bernoulli, GilbertElliott, LossModel
from kvcodec_sim.packet import Packet
from kvcodec_sim.queue import QueueLimit
from kvcodec_sim.rto import RtoEstimator
from kvcodec_sim.trace import BandwidthTrace
from kvcodec_sim.transfer import TransferResult, simulate_transfer
from kvcodec_sim.units import parse_bandwidth, parse_duration, parse_probability, parse_size

__all__ = [
    "ArqConfig",
    "ArqResult",
    "BandwidthTrace",
    "Bernoulli",
    "Cable",
    "Channel",
    "ExponentialJitter",
    "GilbertElliott",
    "Jitter",
    "Link",
    "LinkSpecError",
    "LossModel",
    "Packet",
    "QueueLimit",
    "RtoEstimator",
    "TransferAborted",
    "TransferResult",
    "UniformJitter",
    "parse_bandwidth",
    "parse_duration",
    "parse_probability",
    "parse_size",
    "simulate_arq",
    "simulate_transfer",
]
