"""One packet in flight on a simulated link."""

from __future__ import annotations

import attrs

__all__ = ["Packet"]


@attrs.frozen
class Packet:
    """A packet as the simulation moves it from sender to receiver.

    Attributes:
        seq: position in the payload, 0-based.
        wire_bytes: size on the wire in bytes, headers included (> 0).
        sent_at_s: simulated time in seconds at which its first bit went onto the wire.

    Raises:
        TypeError, ValueError: at construction, a field has the wrong type or a negative
            value (attrs validators; the message names the field).
    """

    seq: int = attrs.field(validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)])
    wire_bytes: int = attrs.field(validator=[attrs.validators.instance_of(int), attrs.validators.gt(0)])
    sent_at_s: float = attrs.field(validator=[attrs.validators.instance_of(float), attrs.validators.ge(0.0)])
