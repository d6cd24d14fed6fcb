"""A realistic channel: a :class:`~kvcodec_sim.link.Link` plus loss, jitter, a bandwidth
trace and a bottleneck queue, in both directions.

The **data direction** (sender → receiver) has: the drop-tail bottleneck queue (if any),
a serializer at ``link.bandwidth_bps`` or, with a trace, at the trace's rate, the data
loss model, propagation ``link.latency_s`` plus jitter. The **ACK direction**
(receiver → sender) has: an unlimited queue, a serializer at ``link.bandwidth_bps`` (the
trace shapes the data direction only), the ACK loss model, propagation ``link.latency_s``
plus jitter (same jitter model, its own draws). Both directions are FIFO unless
``reorder`` is set.

A channel with no loss, no jitter, no trace and no queue limit is exactly the lossless
:class:`Link` of ``specs/link-model.md`` §3–§6.

Spec string (:meth:`Channel.parse`), a bandwidth then options, comma-separated::

    100Mbps
    100Mbps,loss=1%                     independent loss 1 % in both directions
    100Mbps,data-loss=0.05,ack-loss=0   5 % on data packets only
    1Gbps,ge=0.01/0.25                  Gilbert (bursty) loss in both directions
    1Gbps,data-ge=1%/25%/0.001/0.5      Gilbert–Elliott on data: p_gb/p_bg/loss_good/loss_bad
    1Gbps,ge=0.01/0.25,ge-clock=time    the chain also steps once per idle MTU slot
    100Mbps,jitter=2ms                  + uniform [0, 2 ms] per packet, FIFO
    100Mbps,jitter=exp:1ms,reorder=yes  + exponential, mean 1 ms; packets may overtake
    100Mbps,trace=lte.csv,queue=100pkt  data rate from a trace file, 100-packet drop-tail queue
"""

from __future__ import annotations

import attrs
import numpy as np

from kvcodec_sim.errors import LinkSpecError, quoted
from kvcodec_sim.jitter import NO_JITTER, ExponentialJitter, Jitter, UniformJitter, parse_jitter
from kvcodec_sim.link import Link
from kvcodec_sim.loss import NO_LOSS, Bernoulli, GilbertElliott, LossModel, parse_gilbert_elliott, parse_loss
from kvcodec_sim.options import split_options
from kvcodec_sim.path import Path
from kvcodec_sim.queue import QueueLimit
from kvcodec_sim.trace import BandwidthTrace

__all__ = ["Channel", "CHANNEL_OPTIONS"]

#: Keys a channel spec accepts after the bandwidth.
CHANNEL_OPTIONS = ("loss", "data-loss", "ack-loss", "ge", "data-ge", "ack-ge", "ge-clock", "jitter", "reorder", "trace", "queue")
#: Clocks of the Gilbert–Elliott chain: one step per packet sent, or also one per idle MTU slot.
GE_CLOCKS = ("packet", "time")
_EXAMPLE = "100Mbps,loss=1%,jitter=2ms or 1Gbps,data-ge=0.01/0.25,queue=100pkt"
_YES = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}


def _is(kind, name: str):
    def check(_inst, attribute: attrs.Attribute, value: object) -> None:
        if not isinstance(value, kind):
            raise TypeError(f"{attribute.name} must be {name}, got {type(value).__name__} {value!r}")

    return check


def _is_clock(_inst, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str, got {type(value).__name__} {value!r}")
    if value not in GE_CLOCKS:
        raise LinkSpecError(f"{attribute.name} must be {' or '.join(GE_CLOCKS)}, got {value!r}")


@attrs.frozen
class Channel:
    """A link with impairments, in both directions (see the module docstring).

    Attributes:
        link: bandwidth (data direction without a trace; always the ACK direction),
            latency, MTU and header size.
        data_loss: loss model of the data direction. Default: none.
        ack_loss: loss model of the ACK direction. Default: none.
        jitter: extra per-packet delay, both directions. Default: none.
        reorder: let jittered packets overtake one another (default ``False``: FIFO).
        trace: data-direction bandwidth over time; ``None`` for the constant
            ``link.bandwidth_bps``.
        queue: capacity of the data direction's drop-tail bottleneck queue; ``None`` for
            unlimited.
        ge_clock: ``"packet"`` (default): a Gilbert–Elliott chain steps once per packet
            sent (Gilbert 1960); ``"time"``: also once per MTU time (at
            ``link.bandwidth_bps``) the link stands idle, so a burst lasts a time, not a number of packets sent — an ARQ sender
            that only retransmits once per RTO then does not stay in a burst for many RTOs
            (``specs/link-model.md`` §7.1). No effect on independent loss.

    Raises:
        TypeError: at construction, a field has the wrong type (the message names it).
    """

    link: Link = attrs.field(validator=_is(Link, "a Link"))
    data_loss: LossModel = attrs.field(default=NO_LOSS, validator=_is(LossModel, "a LossModel"))
    ack_loss: LossModel = attrs.field(default=NO_LOSS, validator=_is(LossModel, "a LossModel"))
    jitter: Jitter = attrs.field(default=NO_JITTER, validator=_is(Jitter, "a Jitter"))
    reorder: bool = attrs.field(default=False, validator=_is(bool, "a bool"))
    trace: BandwidthTrace | None = attrs.field(default=None, validator=_is((BandwidthTrace, type(None)), "a BandwidthTrace or None"))
    queue: QueueLimit | None = attrs.field(default=None, validator=_is((QueueLimit, type(None)), "a QueueLimit or None"))
    ge_clock: str = attrs.field(default="packet", validator=_is_clock)

    @classmethod
    def parse(
        cls,
        spec: str,
        latency: str | float = 0.0,
        mtu: str | int = 1500,
        header_bytes: str | int = 40,
    ) -> "Channel":
        """Build a channel from a spec string such as ``"100Mbps,loss=1%,jitter=2ms"``.

        Grammar (full version in ``specs/link-model.md`` §8)::

            spec   := bandwidth ("," option)*
            option := "loss=" P | "data-loss=" P | "ack-loss=" P           independent loss
                    | "ge=" G | "data-ge=" G | "ack-ge=" G                 Gilbert–Elliott
                    | "ge-clock=" ("packet" | "time")                      its clock
                    | "jitter=" D | "jitter=uniform:" D | "jitter=exp:" D
                    | "reorder=" (yes|no|true|false|on|off|1|0)
                    | "trace=" PATH | "queue=" N "pkt" | "queue=" SIZE "B"
            P := probability (0.01 or 1%), below 1;  G := P "/" P ["/" P "/" P]

        ``loss``/``ge`` apply to both directions; ``data-…``/``ack-…`` to one and override
        the two-way option for it. A direction may not get both an independent and a
        Gilbert–Elliott model from options of the same reach. ``latency``, ``mtu`` and
        ``header_bytes`` are as in :meth:`Link.parse`.

        Raises:
            TypeError: ``spec`` is not a ``str`` (or another argument has a wrong type).
            LinkSpecError: malformed spec, unknown or repeated option, bad value, unreadable
                or malformed trace file; one line.
        """
        if not isinstance(spec, str):
            raise TypeError(f"link spec must be given as str, got {type(spec).__name__}")
        bandwidth, *items = spec.split(",")
        if "=" in bandwidth or not bandwidth.strip():
            raise LinkSpecError(f"invalid link spec {quoted(spec)}: it must start with a bandwidth; e.g. {_EXAMPLE}")
        options = split_options(items, "link spec", spec, CHANNEL_OPTIONS, _EXAMPLE)
        link = Link.parse(bandwidth, latency=latency, mtu=mtu, header_bytes=header_bytes)

        def option(key: str, parse):
            if key not in options:
                return None
            try:
                return parse(options[key])
            except LinkSpecError as err:
                raise LinkSpecError(f"invalid link option {key}={quoted(options[key])}: {err}") from None

        def direction(side: str) -> LossModel:
            models = {}
            for reach in (side + "-", ""):
                bernoulli, gilbert = option(reach + "loss", parse_loss), option(reach + "ge", parse_gilbert_elliott)
                if bernoulli is not None and gilbert is not None:
                    raise LinkSpecError(
                        f"invalid link spec {quoted(spec)}: both {reach}loss and {reach}ge given; "
                        f"pick one loss model per direction"
                    )
                models[reach] = bernoulli or gilbert
            return models[side + "-"] or models[""] or NO_LOSS

        reorder = option("reorder", lambda text: _flag("reorder", text))
        data_loss, ack_loss = direction("data"), direction("ack")
        clock = option("ge-clock", _ge_clock)
        if clock is not None and not any(isinstance(m, GilbertElliott) for m in (data_loss, ack_loss)):
            raise LinkSpecError(f"invalid link spec {quoted(spec)}: ge-clock needs ge=, data-ge= or ack-ge=")
        return cls(
            link=link,
            data_loss=data_loss,
            ack_loss=ack_loss,
            ge_clock=clock or "packet",
            jitter=option("jitter", parse_jitter) or NO_JITTER,
            reorder=bool(reorder),
            trace=option("trace", BandwidthTrace.load),
            queue=option("queue", QueueLimit.parse),
        )

    @property
    def is_lossless(self) -> bool:
        """No random loss in either direction and no queue limit (so nothing is ever dropped)."""
        return self.data_loss.loss_rate == 0.0 and self.ack_loss.loss_rate == 0.0 and self.queue is None

    @property
    def max_data_rate_bps(self) -> float:
        """Highest serialization rate of the data direction, bit/s."""
        return self.trace.max_rate_bps if self.trace is not None else self.link.bandwidth_bps

    def open(self, seed: int | np.random.SeedSequence | None = 0) -> tuple[Path, Path]:
        """Fresh ``(data path, ACK path)`` for one run, with seeded random streams.

        ``np.random.SeedSequence(seed).spawn(4)`` gives four independent generators, in
        this order: data loss, ACK loss, data jitter, ACK jitter. Changing one impairment
        therefore leaves the other streams, and their draws, as they were.
        """
        sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        data_loss, ack_loss, data_jitter, ack_jitter = (np.random.default_rng(s) for s in sequence.spawn(4))
        has_jitter = self.jitter.mean_s > 0.0
        link = self.link
        # ge-clock=time: one slot is one MTU at the nominal bandwidth, in both directions
        slot = link.mtu_bytes * 8 / link.bandwidth_bps if self.ge_clock == "time" else None
        data = Path(
            self.trace if self.trace is not None else link.bandwidth_bps,
            link.latency_s,
            losses=self.data_loss.losses(data_loss) if self.data_loss.loss_rate > 0.0 else None,
            delays=self.jitter.delays(data_jitter) if has_jitter else None,
            reorder=self.reorder,
            queue=self.queue,
            slot_s=slot,
        )
        ack = Path(
            link.bandwidth_bps,
            link.latency_s,
            losses=self.ack_loss.losses(ack_loss) if self.ack_loss.loss_rate > 0.0 else None,
            delays=self.jitter.delays(ack_jitter) if has_jitter else None,
            reorder=self.reorder,
            slot_s=slot,
        )
        return data, ack

    def describe(self) -> str:
        """One human-readable line, e.g. ``100 Mbit/s, 10 ms, MTU 1500 B (40 B headers); data loss 1%; ...``."""
        link = self.link
        parts = [
            f"{link.bandwidth_bps / 1e6:g} Mbit/s, {link.latency_s * 1e3:g} ms, MTU {link.mtu_bytes} B "
            f"({link.header_bytes} B headers)"
        ]
        for name, model in (("data loss", self.data_loss), ("ACK loss", self.ack_loss)):
            parts.append(f"{name} {_describe_loss(model)}")
        if self.ge_clock == "time" and any(isinstance(m, GilbertElliott) for m in (self.data_loss, self.ack_loss)):
            parts.append("Gilbert-Elliott clock: also one step per idle MTU time (bursts in packets when back to back)")
        if self.jitter.mean_s > 0.0:
            if isinstance(self.jitter, UniformJitter):
                shape = f"uniform 0-{self.jitter.max_s * 1e3:g} ms"
            elif isinstance(self.jitter, ExponentialJitter):
                shape = f"exponential, mean {self.jitter.mean_s * 1e3:g} ms"
            else:
                shape = f"mean {self.jitter.mean_s * 1e3:g} ms"
            parts.append(f"jitter {shape}, {'reordering' if self.reorder else 'FIFO'}")
        if self.trace is not None:
            parts.append(f"data rate from trace {self.trace.source} ({len(self.trace.times_s)} rows)")
        if self.queue is not None:
            limits = [f"{v} {u}" for v, u in ((self.queue.packets, "packets"), (self.queue.bytes, "B")) if v is not None]
            parts.append(f"drop-tail queue {' and '.join(limits) or 'unlimited'}")
        return "; ".join(parts)


def _describe_loss(model: LossModel) -> str:
    if model.loss_rate == 0.0:
        return "none"
    if isinstance(model, Bernoulli):
        return f"{model.p:.4g} independent"
    if isinstance(model, GilbertElliott):
        return (
            f"{model.loss_rate:.4g} Gilbert-Elliott (p_gb {model.p_gb:g}, p_bg {model.p_bg:g}, "
            f"loss {model.loss_good:g}/{model.loss_bad:g}; mean burst {model.mean_burst_length:.3g} packets)"
        )
    return f"{model.loss_rate:.4g} ({type(model).__name__})"


def _ge_clock(text: str) -> str:
    clock = text.strip().lower()
    if clock not in GE_CLOCKS:
        raise LinkSpecError(f"expected {' or '.join(GE_CLOCKS)}")
    return clock


def _flag(name: str, text: str) -> bool:
    try:
        return _YES[text.strip().lower()]
    except KeyError:
        raise LinkSpecError(f"invalid {name} {quoted(text)}: expected yes or no") from None

