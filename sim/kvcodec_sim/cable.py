"""A SimPy cable: packets come out a constant propagation delay after they go in.

Like the ``Cable`` of SimPy's "Event Latency" example, but without a process per packet:
each packet rides a timeout event whose callback drops it into the receiving end's
:class:`simpy.Store`. Many packets can be in flight at once.
"""

from __future__ import annotations

import math

import simpy

from kvcodec_sim.packet import Packet

__all__ = ["Cable"]


class Cable:
    """Carries packets from one end to the other in ``propagation_delay_s`` seconds.

    :meth:`put` a packet at the moment its last bit has been serialized; :meth:`get` returns
    a SimPy event that fires with the next packet whose last bit has arrived
    (``propagation_delay_s`` after it was put). Nothing is lost, and with a constant delay
    packets arrive in the order they were put.

    Args:
        env: the SimPy environment.
        propagation_delay_s: one-way propagation delay in seconds, finite and ≥ 0.

    Raises:
        ValueError: ``propagation_delay_s`` is negative, nan or infinite.
    """

    def __init__(self, env: simpy.Environment, propagation_delay_s: float):
        if not (math.isfinite(propagation_delay_s) and propagation_delay_s >= 0.0):
            raise ValueError(f"propagation_delay_s must be finite and >= 0 seconds, got {propagation_delay_s!r}")
        self.env = env
        self.propagation_delay_s = propagation_delay_s
        self._arrived = simpy.Store(env)

    def put(self, packet: Packet) -> None:
        """Launch ``packet`` now; it arrives ``propagation_delay_s`` seconds later."""
        propagation = self.env.timeout(self.propagation_delay_s, value=packet)
        propagation.callbacks.append(self._arrive)

    def get(self) -> simpy.events.Event:
        """An event that fires with the next packet to have arrived."""
        return self._arrived.get()

    def _arrive(self, propagation: simpy.events.Timeout) -> None:
        self._arrived.put(propagation.value)
