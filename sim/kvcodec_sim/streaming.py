"""The receiver's timeline when a cache arrives as a stream of chunks (``specs/streaming.md`` §4).

Model. The sender has its chunks ready at ``start_s`` (after its encode) and sends them
back to back as one byte stream (:func:`~kvcodec_sim.delivery.deliver`). Chunk ``k``
occupies bytes ``[O_k, O_{k+1})`` of the stream and is *usable* when all of them have been
delivered in order: ``arrived_k = start_s + time_delivered(O_{k+1})``. The receiver has one
worker that handles chunks in order, one at a time: it decodes chunk ``k`` (``decode_s``)
and then runs the question's prefill through that chunk's layers (``prefill_s``)::

    begin_k = max(end_{k−1}, arrived_k)          (end_{−1} = start_s)
    decode  = [begin_k, begin_k + decode_s_k]
    prefill = [decode end, decode end + prefill_s_k] = end_k
    first token at end_{K−1} + head_s             TTFT, counted from time 0

Layer-wise pipelining is what makes this valid: the question's forward pass through
layer ``i`` needs that layer's keys and values and the hidden states leaving layer
``i − 1``, nothing of later layers; so the receiver can push the question through the
layers of chunk ``k`` while chunk ``k + 1`` is still on the wire. ``head_s`` is the part of
the question's forward pass outside the decoder layers (embedding, final norm, LM head,
choosing the token), counted once at the end.

Sending the whole cache as one payload is the case of one chunk: TTFT = start +
delivery of all bytes + decode + prefill of every layer + head. Sending text is one chunk
with no decode whose "prefill" is the whole text prefill (first token included).
"""

from __future__ import annotations

from typing import Sequence

import attrs

from kvcodec_sim.delivery import Delivery

__all__ = ["ChunkWork", "ChunkTimes", "Timeline", "receiver_schedule", "build_timeline"]


def _nonneg(_inst, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{attribute.name} must be a number >= 0, got {value!r}")


@attrs.frozen
class ChunkWork:
    """One chunk as the simulator sees it: its size and the receiver's work on it.

    Attributes:
        nbytes: bytes on the stream (chunk header included), ≥ 1.
        decode_s: receiver decode time, seconds.
        prefill_s: the question's prefill through the chunk's layers, seconds.
        first_layer, layer_count: the layers it holds (for reports).
        level: the level (pipeline spec) it was encoded at, or ``"text"``.
    """

    nbytes: int = attrs.field(validator=attrs.validators.and_(attrs.validators.instance_of(int), attrs.validators.ge(1)))
    decode_s: float = attrs.field(validator=_nonneg)
    prefill_s: float = attrs.field(validator=_nonneg)
    first_layer: int = 0
    layer_count: int = 0
    level: str = ""


@attrs.frozen
class ChunkTimes:
    """What happened to one chunk, seconds from time 0."""

    index: int
    level: str
    first_layer: int
    layer_count: int
    nbytes: int
    sent_s: float  # its first byte handed to the transport
    arrived_s: float  # its last byte delivered in order
    decode_start_s: float
    decode_end_s: float
    prefill_start_s: float
    prefill_end_s: float


@attrs.frozen
class Timeline:
    """One way of getting the first token: chunk by chunk, what happened when.

    Attributes:
        label: what was sent (``"int8 (stream)"``, ``"text + recompute"``, …).
        mode: ``"stream"``, ``"whole"`` (one payload) or ``"text"``.
        start_s: when the sender started sending (its encode before that).
        chunks: per chunk, its :class:`ChunkTimes`.
        head_s: first-token time after the last layer.
        first_token_s: TTFT.
        goodput_bps, retransmissions: of the stream's delivery.
    """

    label: str
    mode: str
    start_s: float
    chunks: tuple[ChunkTimes, ...]
    head_s: float
    first_token_s: float
    goodput_bps: float = 0.0
    retransmissions: int = 0

    @property
    def ttft_s(self) -> float:
        return self.first_token_s

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.chunks)

    @property
    def delivered_s(self) -> float:
        """When the last byte arrived."""
        return max(c.arrived_s for c in self.chunks)

    def events(self) -> list[dict]:
        """Every event in time order: ``{"t_s", "event", "chunk"}``; events are ``encoded``
        (the sender is ready), ``sent``, ``arrived``, ``decode_start``, ``decode_end``,
        ``prefill_start``, ``prefill_end`` and ``first_token``."""
        out = [{"t_s": self.start_s, "event": "encoded", "chunk": None}]
        for c in self.chunks:
            for name in ("sent", "arrived", "decode_start", "decode_end", "prefill_start", "prefill_end"):
                out.append({"t_s": getattr(c, name + "_s"), "event": name, "chunk": c.index})
        out.append({"t_s": self.first_token_s, "event": "first_token", "chunk": None})
        return sorted(out, key=lambda e: e["t_s"])

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "mode": self.mode,
            "start_s": self.start_s,
            "ttft_s": self.first_token_s,
            "head_s": self.head_s,
            "bytes": self.nbytes,
            "goodput_bps": self.goodput_bps,
            "retransmissions": self.retransmissions,
            "chunks": [attrs.asdict(c) for c in self.chunks],
            "events": self.events(),
        }


def receiver_schedule(arrivals_s: Sequence[float], works: Sequence[ChunkWork], head_s: float,
                      start_s: float = 0.0) -> tuple[list[tuple[float, float, float]], float]:
    """The receiver recursion of the module docstring.

    Returns ``([(begin_k, decode_end_k, end_k), …], first_token_s)``.
    """
    out, end = [], start_s
    for arrived, work in zip(arrivals_s, works):
        begin = end if end > arrived else arrived
        decoded = begin + work.decode_s
        end = decoded + work.prefill_s
        out.append((begin, decoded, end))
    return out, end + head_s


def build_timeline(works: Sequence[ChunkWork], delivery: Delivery, *, start_s: float = 0.0, head_s: float = 0.0,
                   label: str = "", mode: str = "stream") -> Timeline:
    """The :class:`Timeline` of ``works`` sent as one stream whose delivery is ``delivery``
    (a stream of exactly ``sum(nbytes)`` bytes), starting at ``start_s``.

    Raises:
        ValueError: no chunk, or ``delivery`` is of another length.
    """
    if not works:
        raise ValueError("a timeline needs at least one chunk")
    total = sum(w.nbytes for w in works)
    if delivery.payload_bytes != total:
        raise ValueError(f"delivery of {delivery.payload_bytes} bytes for chunks of {total} bytes")
    offsets, pos = [], 0
    for w in works:
        offsets.append((pos, pos + w.nbytes))
        pos += w.nbytes
    arrivals = [start_s + delivery.time_delivered(end) for _, end in offsets]
    schedule, first_token = receiver_schedule(arrivals, works, head_s, start_s)
    chunks = tuple(
        ChunkTimes(
            index=k,
            level=w.level,
            first_layer=w.first_layer,
            layer_count=w.layer_count,
            nbytes=w.nbytes,
            sent_s=start_s + delivery.time_handed_over(begin_offset),
            arrived_s=arrived,
            decode_start_s=begin,
            decode_end_s=decoded,
            prefill_start_s=decoded,
            prefill_end_s=end,
        )
        for k, (w, (begin_offset, _), arrived, (begin, decoded, end)) in enumerate(zip(works, offsets, arrivals, schedule))
    )
    return Timeline(label, mode, start_s, chunks, head_s, first_token, delivery.goodput_bps, delivery.retransmissions)
