"""Tests of kvcodec_sim's channel: spec strings, jitter, the drop-tail queue and one-way paths."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcodec_sim import (
    ArqConfig,
    Bernoulli,
    Channel,
    ExponentialJitter,
    GilbertElliott,
    Link,
    LinkSpecError,
    QueueLimit,
    UniformJitter,
    parse_probability,
    simulate_arq,
)
from kvcodec_sim.jitter import NO_JITTER, parse_jitter
from kvcodec_sim.loss import NO_LOSS
from kvcodec_sim.path import Path
from kvcodec_sim.queue import DropTailQueue

# ---------------------------------------------------------------- channel spec strings


@pytest.mark.parametrize(
    ("spec", "fields"),
    [
        ("100Mbps", {}),
        ("100Mbps,loss=1%", dict(data_loss=Bernoulli(0.01), ack_loss=Bernoulli(0.01))),
        ("100Mbps,loss=1%,ack-loss=0", dict(data_loss=Bernoulli(0.01), ack_loss=Bernoulli(0.0))),
        ("100Mbps,data-loss=0.05", dict(data_loss=Bernoulli(0.05))),
        ("1Gbps,ge=0.01/0.25", dict(data_loss=GilbertElliott(0.01, 0.25), ack_loss=GilbertElliott(0.01, 0.25))),
        ("1Gbps,data-ge=1%/25%/0.001/0.5,ack-loss=2%",
         dict(data_loss=GilbertElliott(0.01, 0.25, 0.001, 0.5), ack_loss=Bernoulli(0.02))),
        ("1Gbps,loss=1%,data-ge=0.01/0.5", dict(data_loss=GilbertElliott(0.01, 0.5), ack_loss=Bernoulli(0.01))),
        (" 100Mbps , jitter = 2ms , reorder=yes ", dict(jitter=UniformJitter(0.002), reorder=True)),
        ("100Mbps,jitter=uniform:2ms,reorder=off", dict(jitter=UniformJitter(0.002))),
        ("100Mbps,jitter=exp:1ms", dict(jitter=ExponentialJitter(0.001))),
        ("100Mbps,queue=100pkt", dict(queue=QueueLimit(packets=100))),
        ("100Mbps,queue=64kB", dict(queue=QueueLimit(bytes=64000))),
        ("1Gbps,ge=0.01/0.25,ge-clock=time",
         dict(data_loss=GilbertElliott(0.01, 0.25), ack_loss=GilbertElliott(0.01, 0.25), ge_clock="time")),
        ("1Gbps,data-ge=0.01/0.25,ge-clock=packet", dict(data_loss=GilbertElliott(0.01, 0.25))),
    ],
)
def test_channel_parse(spec, fields):
    assert Channel.parse(spec, latency="10ms") == Channel(Link(1e8 if "100M" in spec else 1e9, 0.01), **fields)


def test_channel_parse_passes_link_fields():
    channel = Channel.parse("1Gbps,loss=0.5%", latency=0.02, mtu="9000B", header_bytes=52)
    assert channel.link == Link(1e9, 0.02, 9000, 52)
    assert channel.data_loss == Bernoulli(0.005)


BAD_SPECS = [
    ("", "must start with a bandwidth"),
    ("loss=1%", "must start with a bandwidth"),
    ("100", "invalid bandwidth"),
    ("100mbps,loss=1%", "invalid bandwidth"),
    ("100Mbps,", "empty item"),
    ("100Mbps,,loss=1%", "empty item"),
    ("100Mbps,loss", "is not key=value"),
    ("100Mbps,lose=1%", "unknown option 'lose'"),
    ("100Mbps,loss=1%,loss=2%", "given twice"),
    ("100Mbps,loss=", "has no value"),
    ("100Mbps,loss=1%,ge=0.1/0.2", "both loss and ge"),
    ("100Mbps,data-loss=1%,data-ge=0.1/0.2", "both data-loss and data-ge"),
    ("100Mbps,loss=100%", "must be below 1"),
    ("100Mbps,loss=2", "greater than 1"),
    ("100Mbps,ge=0.1", "p_gb/p_bg"),
    ("100Mbps,ge=0.1/0", "p_bg must be a probability in (0, 1]"),
    ("100Mbps,jitter=5", "missing unit"),
    ("100Mbps,jitter=gauss:1ms", "unknown distribution"),
    ("100Mbps,jitter=-1ms", "negative"),
    ("100Mbps,reorder=maybe", "expected yes or no"),
    ("100Mbps,queue=100", "packets or bytes with a unit"),
    ("100Mbps,queue=100b", "packets or bytes with a unit"),
    ("100Mbps,queue=1.5kpkt", "packets or bytes with a unit"),
    ("100Mbps,ge-clock=time", "ge-clock needs ge="),
    ("100Mbps,loss=1%,ge-clock=time", "ge-clock needs ge="),
    ("100Mbps,ge=1%/25%,ge-clock=wall", "expected packet or time"),
]


@pytest.mark.parametrize(("spec", "fragment"), BAD_SPECS)
def test_channel_parse_rejects_with_one_line(spec, fragment):
    with pytest.raises(LinkSpecError) as info:
        Channel.parse(spec)
    message = str(info.value)
    assert message.splitlines() == [message]
    assert fragment in message


@settings(max_examples=300)
@given(st.text(alphabet="0123456789.%,=:/ MbpsGkmloaeg-jitrdqu"))
def test_random_specs_raise_only_link_spec_error(text):
    try:
        Channel.parse(text)
    except LinkSpecError as err:
        assert str(err).splitlines() == [str(err)]


def test_channel_parse_type_errors():
    with pytest.raises(TypeError):
        Channel.parse(100)
    with pytest.raises(TypeError, match="link"):
        Channel("100Mbps")
    with pytest.raises(TypeError, match="data_loss"):
        Channel(Link(1e6), data_loss=0.1)


def test_describe_is_one_line():
    channel = Channel.parse("100Mbps,data-ge=0.01/0.25,ack-loss=1%,jitter=exp:1ms,queue=64kB", latency="5ms")
    text = channel.describe()
    assert text.splitlines() == [text]
    assert "Gilbert-Elliott" in text and "exponential" in text and "64000 B" in text
    assert "none" in Channel(Link(1e6)).describe()


def test_lossless_flag_and_max_rate():
    assert Channel(Link(1e6)).is_lossless and Channel(Link(1e6)).data_loss == NO_LOSS == Bernoulli(0.0)
    assert not Channel.parse("1Mbps,ack-loss=1%").is_lossless
    assert not Channel.parse("1Mbps,queue=10pkt").is_lossless
    assert Channel.parse("1Mbps,loss=0,jitter=1ms").is_lossless


def test_random_streams_are_separate():
    # the data-loss stream does not depend on whether jitter is drawn (specs/link-model.md §7.6)
    def pattern(spec):
        data, _ = Channel.parse(spec).open(seed=5)
        return [data.send(10.0 * i, 100) is None for i in range(500)]

    plain = pattern("1Mbps,loss=20%")
    assert plain == pattern("1Mbps,loss=20%,jitter=1ms") == pattern("1Mbps,data-loss=20%,ack-loss=5%")
    assert plain != pattern("1Mbps,loss=20%,jitter=1ms".replace("20%", "21%"))
    assert plain != [data.send(10.0 * i, 100) is None for data in [Channel.parse("1Mbps,loss=20%").open(6)[0]]
                     for i in range(500)]


def test_parse_probability():
    assert parse_probability("12.5%") == 0.125 and parse_probability("1") == 1.0
    with pytest.raises(TypeError):
        parse_probability(0.5)


# ---------------------------------------------------------------- jitter


def test_uniform_jitter_range_and_mean():
    jitter = UniformJitter("2ms")
    assert jitter.max_s == 0.002 and jitter.mean_s == 0.001
    count = 100_000
    delays = np.fromiter(itertools.islice(jitter.delays(np.random.default_rng(1)), count), float, count)
    assert delays.min() >= 0.0 and delays.max() <= 0.002
    # uniform on [0, a]: standard deviation a / sqrt(12); 4 standard errors
    assert abs(delays.mean() - 0.001) < 4 * 0.002 / math.sqrt(12) / math.sqrt(count)


def test_exponential_jitter_mean():
    count = 100_000
    delays = np.fromiter(itertools.islice(ExponentialJitter(0.001).delays(np.random.default_rng(2)), count), float, count)
    assert delays.min() >= 0.0
    assert abs(delays.mean() - 0.001) < 4 * 0.001 / math.sqrt(count)  # sd of an exponential = its mean


def test_no_jitter_draws_nothing():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert set(itertools.islice(NO_JITTER.delays(rng), 100)) == {0.0}
    assert set(itertools.islice(ExponentialJitter(0).delays(rng), 100)) == {0.0}
    assert rng.bit_generator.state == state


def test_parse_jitter_and_errors():
    assert parse_jitter("250us") == UniformJitter(250e-6)
    assert parse_jitter("exp: 1 ms") == ExponentialJitter(0.001)
    for bad in ("", "1", "exp:", "normal:1ms", "1ms:exp"):
        with pytest.raises(LinkSpecError):
            parse_jitter(bad)
    with pytest.raises(LinkSpecError, match="max_s"):
        UniformJitter(math.inf)
    with pytest.raises(TypeError, match="mean_s"):
        ExponentialJitter(None)


def arrivals(path: Path, count: int, gap_s: float = 0.0) -> list[float]:
    return [path.send(i * gap_s, 1000) for i in range(count)]


def test_fifo_path_keeps_order_and_reorder_path_does_not():
    def path(reorder):
        return Path(1e9, 0.001, delays=UniformJitter(0.01).delays(np.random.default_rng(3)), reorder=reorder)

    fifo, free = arrivals(path(False), 2000), arrivals(path(True), 2000)
    assert all(b >= a for a, b in zip(fifo, fifo[1:]))
    assert sum(b < a for a, b in zip(free, free[1:])) > 100
    # FIFO arrival = max(own drawn arrival, previous arrival), same draws
    assert fifo == list(itertools.accumulate(free, max))


def test_path_without_impairments_is_the_link():
    link = Link.parse("100Mbps", latency="10ms")
    path = Path(link.bandwidth_bps, link.latency_s)
    times = arrivals(path, 3)
    serialization = 1000 * 8 / 1e8
    assert times == [serialization + 0.01, 2 * serialization + 0.01, 3 * serialization + 0.01]
    assert (path.handed, path.serialized, path.serialized_bytes, path.delivered) == (3, 3, 3000, 3)


def test_path_loses_after_serialization():
    path = Path(8000.0, 0.0, losses=iter([True, False]))
    assert path.send(0.0, 1000) is None  # lost on the wire, but it used the link for 1 s
    assert path.send(0.0, 1000) == 2.0
    assert (path.wire_losses, path.serialized, path.delivered) == (1, 2, 1)


class _Recorder:
    """A loss 'model' that never loses and records how it was resumed: None for next(),
    k for send(k)."""

    def __init__(self):
        self.calls = []

    def __iter__(self):
        return self

    def __next__(self):
        self.calls.append(None)
        return False

    def send(self, k):
        self.calls.append(k)
        return False


def test_path_counts_idle_mtu_slots_for_the_loss_clock():
    rec = _Recorder()
    path = Path(8000.0, 0.0, losses=rec, slot_s=1.0)
    assert path.send(0.0, 1000) == 1.0      # first packet: next()
    assert path.send(3.5, 1000) == 4.5      # idle 1.0 → 3.5: 2 whole slots
    assert path.send(4.0, 500) == 5.0       # queued behind the previous packet: back to back
    assert path.send(9.25, 500) == 9.75     # idle 5.0 → 9.25 at 8 kbit/s: 4 slots of 1000 B
    assert rec.calls == [None, 2, None, 4]
    with pytest.raises(ValueError, match="slot_s"):
        Path(8000.0, 0.0, slot_s=float("nan"))


@pytest.mark.parametrize("bandwidth", ["100Mbps", "1Gbps", "10Gbps"])
def test_an_idle_time_of_exactly_n_mtu_counts_n_slots(bandwidth):
    link = Link.parse(bandwidth)
    slot = link.mtu_bytes * 8 / link.bandwidth_bps
    for n in range(1, 200):
        rec = _Recorder()
        path = Channel(link, data_loss=GilbertElliott(0.01, 0.25), ge_clock="time").open(0)[0]
        path._losses = rec
        path.send(0.0, 1500)
        path.send(slot + n * slot, 1500)  # the first packet ends at one slot; then n idle slots
        assert rec.calls == [None, n], (n, rec.calls)


def test_the_slot_is_one_mtu_at_the_nominal_bandwidth_even_with_a_trace():
    from kvcodec_sim import BandwidthTrace

    trace = BandwidthTrace.parse("0 100e6\n0.5 1e6\n")  # the data rate drops 100-fold at 0.5 s
    link = Link.parse("100Mbps")
    rec = _Recorder()
    path = Channel(link, data_loss=GilbertElliott(0.01, 0.25), trace=trace, ge_clock="time").open(0)[0]
    path._losses = rec
    path.send(0.0, 1500)            # ends at 120 µs
    path.send(0.6, 1500)            # slow packet: the idle time is still counted in 120 µs slots
    assert rec.calls == [None, int((0.6 - 1500 * 8 / 100e6) / (1500 * 8 / 100e6))]
    plain = _Recorder()
    path = Path(8000.0, 0.0, losses=plain)  # packet clock: never told about idle time
    for t in (0.0, 3.5, 4.0, 9.25):
        path.send(t, 1000)
    assert plain.calls == [None] * 4


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1))
def test_time_clock_on_a_saturated_link_is_the_packet_clock(seed):
    def losses(clock):
        data, _ = Channel.parse(f"100Mbps,ge=5%/30%,ge-clock={clock}").open(seed)
        return [data.send(0.0, 1500) is None for _ in range(2000)]  # all handed at once: back to back

    assert losses("time") == losses("packet")


@pytest.mark.parametrize("seed", range(8))
def test_time_clock_arq_delivers_without_stalling_for_minutes(seed):
    # Gilbert loss of 10 % in bursts of 4 both ways, as reports/transport's bursty rows. With
    # the packet clock a blocked window's lone retransmission (once per doubling RTO) is all
    # that moves the chain, and seed 1 of this case stalls for 164 s; with the time clock a
    # burst lasts a few MTU times and every seed finishes within a few seconds.
    link = Link.parse("100Mbps", latency="20ms")
    result = simulate_arq(Channel.parse("100Mbps,ge=2.78%/25%,ge-clock=time", latency="20ms"), 10_000_000, seed=seed)
    assert result.delivery_time_s < 10 * link.closed_form_time(10_000_000), result.delivery_time_s
    assert result.wire_losses > 0


# ---------------------------------------------------------------- drop-tail queue


def test_queue_limit_parse_and_checks():
    assert QueueLimit.parse("100pkt") == QueueLimit(packets=100)
    assert QueueLimit.parse("100 packets") == QueueLimit(packets=100)
    assert QueueLimit.parse("1 packet") == QueueLimit(packets=1)
    assert QueueLimit.parse("64kB") == QueueLimit(bytes=64000)
    assert QueueLimit.parse("0B") == QueueLimit(bytes=0)
    for bad in ("", "100", "-1pkt", "10 kpkt", "1.5B", "64kb"):
        with pytest.raises(LinkSpecError):
            QueueLimit.parse(bad)
    with pytest.raises(LinkSpecError, match="packets"):
        QueueLimit(packets=-1)
    with pytest.raises(TypeError, match="bytes"):
        QueueLimit(bytes=1.5)


def test_queue_drops_tail_when_full_in_packets():
    # 1 kB packets at 8 kbit/s: 1 s each. Ten handed over at t=0: one goes on the wire,
    # three wait, six find the queue full.
    path = Path(8000.0, 0.0, queue=QueueLimit(packets=3))
    times = arrivals(path, 10)
    assert times == [1.0, 2.0, 3.0, 4.0] + [None] * 6
    assert path.queue_drops == 6 and path.serialized == 4
    assert path.send(1.5, 1000) == 5.0  # at 1.5 s the first waiting packet is on the wire: room for one
    assert path.send(1.5, 1000) is None
    assert path.send(4.0, 1000) == 6.0


def test_queue_drops_tail_when_full_in_bytes():
    queue = DropTailQueue(QueueLimit(bytes=2500))
    assert queue.offer(0.0, 0.0, 1500)  # straight to the wire, not queued
    assert queue.offer(0.0, 1.0, 1500)  # waits: 1500 B
    assert not queue.offer(0.0, 2.0, 1500)  # 3000 B would exceed 2500 B
    assert queue.offer(0.0, 2.0, 1000)  # 2500 B fits exactly
    assert (queue.waiting_packets, queue.waiting_bytes, queue.drops) == (2, 2500, 1)
    assert queue.offer(1.0, 3.0, 1500)  # at 1.0 the first waiting packet left for the wire
    assert (queue.waiting_packets, queue.waiting_bytes) == (2, 2500)


def test_zero_capacity_queue_only_accepts_an_idle_link():
    path = Path(8000.0, 0.0, queue=QueueLimit(packets=0))
    assert arrivals(path, 3) == [1.0, None, None]
    assert path.send(1.0, 1000) == 2.0


def test_arq_recovers_queue_drops():
    link = Link.parse("10Mbps", latency="2ms")
    channel = Channel(link, queue=QueueLimit(packets=4))
    nbytes = 200 * link.payload_per_packet
    result = simulate_arq(channel, nbytes, config=ArqConfig(window_packets=32))
    assert result.queue_drops > 0 and result.wire_losses == 0
    assert result.retransmissions >= result.queue_drops
    assert np.isfinite(result.arrived_at_s).all()
    assert (result.delivered_at_s == np.maximum.accumulate(result.arrived_at_s)).all()
