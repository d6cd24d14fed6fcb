"""Tests of kvcodec_sim's selective-repeat ARQ and its RFC 6298 retransmission timer.

The central properties: every byte is delivered, in order, under loss up to 30 % in both
directions; with loss on data packets only, packets are transmitted 1 / (1 − p) times on
average; with no loss the ARQ reproduces the SimPy link model to the bit.
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcodec_sim import (
    ArqConfig,
    ArqResult,
    Bernoulli,
    Channel,
    GilbertElliott,
    Link,
    LinkSpecError,
    QueueLimit,
    RtoEstimator,
    TransferAborted,
    UniformJitter,
    simulate_arq,
    simulate_transfer,
)


@attrs.frozen
class Scripted:
    """A loss model for hand-computed cases: the i-th packet on the wire is lost iff pattern[i]."""

    pattern: tuple[bool, ...]
    loss_rate: float = 0.5  # anything > 0, so that the channel consults it
    mean_burst_length: float = 1.0

    def losses(self, rng):
        yield from self.pattern
        while True:
            yield False


def check_reliable_delivery(result: ArqResult, link: Link, nbytes: int) -> None:
    """Every byte arrived and was delivered in order; the counters add up."""
    packets = link.packet_count(nbytes)
    assert (result.payload_bytes, result.packets) == (nbytes, packets)
    arrived, delivered = result.arrived_at_s, result.delivered_at_s
    assert len(arrived) == len(delivered) == len(result.packet_transmissions) == packets
    assert np.isfinite(arrived).all()  # every packet, so every byte, arrived
    # in order: a packet is delivered exactly when it and all packets before it have arrived
    assert (delivered == np.maximum.accumulate(arrived)).all()
    assert result.delivery_time_s == delivered[-1] == arrived.max()
    assert result.time_delivered(nbytes) == result.delivery_time_s
    assert result.goodput_bps == nbytes * 8 / result.delivery_time_s
    # an acknowledgement needs the packet to have arrived and the ACK to travel back
    assert (result.acked_at_s >= arrived + link.latency_s).all()
    assert result.sender_done_s == result.acked_at_s.max() >= result.delivery_time_s
    counts = result.packet_transmissions
    assert counts.min() >= 1 and counts.sum() == result.transmissions
    assert result.retransmissions == result.transmissions - packets == result.timeouts + result.fast_retransmits
    assert result.acks_sent == packets + result.duplicates  # one ACK per data packet that arrived
    assert result.wire_losses + result.queue_drops + result.acks_sent <= result.transmissions
    assert result.wire_bytes >= link.wire_bytes(nbytes)
    assert result.rtt_samples <= int((counts == 1).sum())  # Karn: no samples from retransmitted packets


# ---------------------------------------------------------------- every byte, in order


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    data_loss=st.floats(0.0, 0.3),
    ack_loss=st.floats(0.0, 0.3),
    packets=st.integers(1, 300),
    extra=st.integers(0, 99),
    window=st.one_of(st.none(), st.integers(1, 64)),
    latency=st.sampled_from([0.0, 0.0005, 0.005]),
    dupthresh=st.sampled_from([None, 1, 3]),
)
def test_arq_delivers_every_byte_in_order_under_loss(seed, data_loss, ack_loss, packets, extra, window, latency, dupthresh):
    link = Link(bandwidth_bps=1e7, latency_s=latency, mtu_bytes=140, header_bytes=40)
    nbytes = (packets - 1) * link.payload_per_packet + 1 + extra
    channel = Channel(link, data_loss=Bernoulli(data_loss), ack_loss=Bernoulli(ack_loss))
    result = simulate_arq(channel, nbytes, config=ArqConfig(window_packets=window, dupthresh=dupthresh), seed=seed)
    check_reliable_delivery(result, link, nbytes)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.floats(0.0, 0.3),
    burst=st.floats(1.0, 8.0),
    ack_loss=st.floats(0.0, 0.3),
    jitter=st.sampled_from([0.0, 0.0002, 0.002]),
    reorder=st.booleans(),
    queue=st.one_of(st.none(), st.integers(0, 20)),
    packets=st.integers(1, 300),
    clock=st.sampled_from(["packet", "time"]),
)
def test_arq_delivers_every_byte_over_bursty_jittery_queued_channels(seed, rate, burst, ack_loss, jitter, reorder, queue, packets,
                                                                     clock):
    link = Link(bandwidth_bps=1e7, latency_s=0.001, mtu_bytes=140, header_bytes=40)
    nbytes = packets * link.payload_per_packet
    channel = Channel(
        link,
        data_loss=GilbertElliott.from_rate_and_burst(rate, burst),
        ack_loss=Bernoulli(ack_loss),
        jitter=UniformJitter(jitter),
        reorder=reorder,
        queue=QueueLimit(packets=queue) if queue is not None else None,
        ge_clock=clock,
    )
    check_reliable_delivery(simulate_arq(channel, nbytes, seed=seed), link, nbytes)


def test_hundred_thousand_packets_with_loss():
    link = Link.parse("10Gbps", latency="10ms")
    nbytes = 100_000 * link.payload_per_packet
    result = simulate_arq(Channel.parse("10Gbps,loss=1%", latency="10ms"), nbytes, seed=3)  # speed: benchmarks/bench_arq.py
    check_reliable_delivery(result, link, nbytes)
    assert result.delivery_time_s > link.closed_form_time(nbytes)


# ---------------------------------------------------------------- transmissions per packet


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3])
def test_mean_transmissions_per_packet_is_one_over_one_minus_p(p):
    # Loss on data packets only, FIFO paths, no queue limit: a packet is sent again only when
    # its previous copy was lost, so its transmissions are geometric with success 1 − p:
    # mean 1/(1 − p), variance p/(1 − p)². Bound: 4 standard errors of the mean over n packets.
    link = Link.parse("100Mbps", latency="1ms")
    n = 20_000
    result = simulate_arq(Channel(link, data_loss=Bernoulli(p)), n * link.payload_per_packet, seed=2024)
    bound = 4 * math.sqrt(p) / (1 - p) / math.sqrt(n)
    assert abs(result.transmissions_per_packet - 1 / (1 - p)) < bound, (result.transmissions_per_packet, bound)
    assert result.duplicates == 0  # no spurious retransmission
    sent_once = (result.packet_transmissions == 1).mean()
    assert abs(sent_once - (1 - p)) < 4 * math.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------- no loss: the SimPy model, exactly

# links whose one-packet round trip (< 0.1 s serialization + 2 × 0.2 s) is below the 1 s
# initial RTO; on slower links the first timers expire before any ACK, as in TCP.
links = st.builds(
    lambda bandwidth, latency, mtu, header_fraction: Link(bandwidth, latency, mtu, min(mtu - 1, int(header_fraction * mtu))),
    bandwidth=st.floats(1e6, 1e11),
    latency=st.one_of(st.just(0.0), st.floats(0.0, 0.2)),
    mtu=st.integers(2, 9216),
    header_fraction=st.floats(0.0, 0.99),
)


@settings(max_examples=100, deadline=None)
@given(link=links, data=st.data())
def test_lossless_arq_is_the_simpy_link_model(link, data):
    nbytes = data.draw(st.integers(1, 400 * link.payload_per_packet), label="nbytes")
    reference = simulate_transfer(link, nbytes, record_packets=True)
    result = simulate_arq(link, nbytes)
    assert result.delivery_time_s == reference.delivery_time_s  # bit for bit
    assert (result.arrived_at_s == reference.packet_arrived_at_s).all()
    assert result.transmissions == result.packets == reference.packets
    assert result.wire_bytes == reference.wire_bytes
    assert result.timeouts == result.fast_retransmits == result.duplicates == 0
    assert result.rtt_samples == result.packets
    assert result.goodput_bps == reference.goodput_bps


def test_stop_and_wait_by_hand():
    # window 1: each packet waits for the previous one's ACK.
    link = Link(bandwidth_bps=1e6, latency_s=0.25, mtu_bytes=1000, header_bytes=40)
    result = simulate_arq(link, 3 * 960, config=ArqConfig(window_packets=1))
    serialization, ack = 8000 / 1e6, 320 / 1e6
    rtt = serialization + 0.25 + ack + 0.25
    assert math.isclose(result.delivery_time_s, 2 * rtt + serialization + 0.25, rel_tol=1e-12)
    assert math.isclose(result.sender_done_s, 3 * rtt, rel_tol=1e-12)
    assert math.isclose(result.srtt_s, rtt, rel_tol=1e-12)


def test_small_window_limits_goodput():
    link = Link.parse("100Mbps", latency="10ms")
    nbytes = 2000 * link.payload_per_packet
    full = simulate_arq(link, nbytes)
    small = simulate_arq(link, nbytes, config=ArqConfig(window_packets=10))
    assert full.window_packets == ArqConfig().auto_window(Channel(link)) >= 16
    assert small.goodput_bps < full.goodput_bps / 10  # 10 packets per ~20 ms round trip


def test_empty_payload():
    result = simulate_arq(Channel.parse("1Mbps,loss=10%"), 0)
    assert (result.packets, result.transmissions, result.delivery_time_s, result.goodput_bps) == (0, 0, 0.0, 0.0)
    assert result.delivered_at_s.shape == (0,) and result.time_delivered(0) == 0.0


# ---------------------------------------------------------------- timers, Karn, fast retransmit, by hand

LINK = Link(bandwidth_bps=1e6, latency_s=0.25, mtu_bytes=1000, header_bytes=40)  # 8 ms per packet, 0.32 ms per ACK
SER, ACK = 0.008, 0.00032


def test_timeout_backoff_and_karn():
    # one packet; its first two transmissions are lost. Timers: initial RTO 1 s, then 2 s
    # (backoff), so the third copy leaves at 3 s.
    channel = Channel(LINK, data_loss=Scripted((True, True)))
    result = simulate_arq(channel, 960, config=ArqConfig(window_packets=1))
    assert (result.timeouts, result.fast_retransmits, result.transmissions) == (2, 0, 3)
    assert math.isclose(result.delivery_time_s, 3.0 + SER + 0.25, rel_tol=1e-12)
    assert result.rtt_samples == 0 and result.srtt_s is None  # Karn: the only ACK is ambiguous
    assert result.rto_s == 4.0  # and the backed-off RTO stays until a valid sample


def test_timers_armed_together_back_off_once():
    # four packets at 1 kbit/s, 0-byte ACKs: the first ACK comes at 0.96 s. All four copies
    # are lost; their timers, armed together at t = 0 with RTO 1 s, expire together: RTO
    # doubles once (to 2 s), not four times.
    link = Link(bandwidth_bps=1e4, latency_s=0.0, mtu_bytes=300, header_bytes=0)  # 0.24 s per packet
    channel = Channel(link, data_loss=Scripted((True,) * 4))
    result = simulate_arq(channel, 4 * 300, config=ArqConfig(window_packets=4))
    assert result.timeouts == 4 and result.rtt_samples == 0 and result.rto_s == 2.0
    # the retransmissions leave at 1 s, back to back: the last arrives at 1 + 4 · 0.24 s
    assert math.isclose(result.delivery_time_s, 1.96, rel_tol=1e-12)


def test_round_trip_longer_than_the_initial_rto_converges():
    # one packet takes 4.568 s to serialize, more than the 1 s initial RTO: the first copies
    # time out, but the backed-off RTO (Karn) soon exceeds the round trip, a packet sent once
    # gives a sample, and the transfer finishes without a retransmission storm.
    link = Link(bandwidth_bps=1000.0, latency_s=0.0, mtu_bytes=571, header_bytes=0)
    result = simulate_arq(link, 50 * 571, config=ArqConfig(window_packets=4))
    check_reliable_delivery(result, link, 50 * 571)
    assert result.rtt_samples > 0 and result.transmissions < 2 * result.packets


def test_karn_keeps_the_sample_of_the_clean_packet():
    # two packets, window 1: the first is lost once; only the second gives an RTT sample.
    channel = Channel(LINK, data_loss=Scripted((True,)))
    result = simulate_arq(channel, 2 * 960, config=ArqConfig(window_packets=1))
    assert result.rtt_samples == 1
    assert math.isclose(result.srtt_s, SER + 0.25 + ACK + 0.25, rel_tol=1e-12)  # not 1 s + that


def test_fast_retransmit_by_hand():
    # ten packets handed over at t=0; packet 0's first copy is lost. The ACK for packet 3
    # (transmission 4 = 1 + dupthresh) reveals the loss: packet 3's last bit arrives at
    # 4·SER + 0.25, its ACK at + ACK + 0.25; the retransmission starts then (the link is idle).
    channel = Channel(LINK, data_loss=Scripted((True,)))
    result = simulate_arq(channel, 10 * 960, config=ArqConfig(window_packets=10))
    assert (result.fast_retransmits, result.timeouts) == (1, 0)
    resend = 4 * SER + 0.25 + ACK + 0.25
    assert math.isclose(result.arrived_at_s[0], resend + SER + 0.25, rel_tol=1e-12)
    assert math.isclose(result.delivery_time_s, resend + SER + 0.25, rel_tol=1e-12)
    # without SACK loss detection the timer repairs it: it runs from the last ACK that
    # acknowledged new data (RFC 6298 §5.3), for the RTO then in force; the timeout doubles
    # RTO, and no sample comes afterwards to undo that (Karn), so the final RTO is twice it.
    slow = simulate_arq(channel, 10 * 960, config=ArqConfig(window_packets=10, dupthresh=None))
    assert (slow.fast_retransmits, slow.timeouts) == (0, 1)
    last_progress, rto = slow.acked_at_s[1:].max(), slow.rto_s / 2
    assert last_progress + rto > 1.0  # later than the 1 s initial timer armed at t = 0
    assert math.isclose(slow.delivery_time_s, last_progress + rto + SER + 0.25, rel_tol=1e-12)


def test_queued_packets_do_not_time_out():
    # 1 kbit/s, 2-byte packets: 16 ms each; a window of 64 queues ~1 s of packets behind the
    # link, far longer than the 200 ms RTO floor. ACKs keep acknowledging new data, so no
    # timer expires and nothing is sent twice.
    link = Link(bandwidth_bps=1000, latency_s=0.0, mtu_bytes=2, header_bytes=1)
    result = simulate_arq(link, 200, config=ArqConfig(window_packets=64))
    assert (result.transmissions, result.timeouts) == (200, 0)
    assert result.delivery_time_s == simulate_transfer(link, 200).delivery_time_s


def test_lost_ack_is_covered_by_the_next_ack():
    # the ACK of packet 0 is lost; the ACK of packet 1 acknowledges both (cumulative), so
    # nothing is sent twice.
    channel = Channel(LINK, ack_loss=Scripted((True,)))
    result = simulate_arq(channel, 5 * 960, config=ArqConfig(window_packets=5))
    assert (result.transmissions, result.acks_lost, result.duplicates) == (5, 1, 0)
    assert result.acked_at_s[0] == result.acked_at_s[1]


def test_sack_blocks_survive_lost_acks():
    # packet 0 is lost; the ACKs of packets 2 and 3 are lost. The ACK of packet 4 carries
    # the block [1, 4], so packets 2 and 3 are not resent; only packet 0 is.
    channel = Channel(LINK, data_loss=Scripted((True,)), ack_loss=Scripted((False, True, True)))
    result = simulate_arq(channel, 8 * 960, config=ArqConfig(window_packets=8))
    assert (result.transmissions, result.duplicates) == (9, 0)
    assert result.packet_transmissions.tolist() == [2, 1, 1, 1, 1, 1, 1, 1]


def test_transfer_aborted():
    channel = Channel(LINK, data_loss=Bernoulli(0.9))
    with pytest.raises(TransferAborted) as info:
        simulate_arq(channel, 20 * 960, config=ArqConfig(max_transmissions=2))
    assert str(info.value).splitlines() == [str(info.value)]


def test_same_seed_same_result():
    channel = Channel.parse("10Mbps,loss=10%,jitter=1ms", latency="1ms")
    first, again = simulate_arq(channel, 500_000, seed=9), simulate_arq(channel, 500_000, seed=9)
    assert first == again and (first.delivered_at_s == again.delivered_at_s).all()
    assert simulate_arq(channel, 500_000, seed=10) != first


# ---------------------------------------------------------------- delivery timeline


def test_time_delivered_maps_byte_offsets_to_packets():
    link = Link(bandwidth_bps=1e6, latency_s=0.01, mtu_bytes=140, header_bytes=40)  # 100 B per packet
    result = simulate_arq(Channel(link, data_loss=Bernoulli(0.2)), 250, seed=1)
    at = result.delivered_at_s
    assert [result.time_delivered(x) for x in (0, 1, 100, 101, 200, 201, 250)] == [0.0, at[0], at[0], at[1], at[1], at[2], at[2]]
    assert (result.time_delivered(np.array([0, 100, 250])) == [0.0, at[0], at[2]]).all()
    for bad in (-1, 251):
        with pytest.raises(ValueError):
            result.time_delivered(bad)
    with pytest.raises(TypeError):
        result.time_delivered(1.5)


# ---------------------------------------------------------------- RFC 6298 by hand


def test_rto_follows_rfc_6298():
    rto = RtoEstimator(min_rto_s=0.0, clock_granularity_s=0.0)
    assert rto.rto_s == 1.0 and rto.srtt_s is None  # §2.1
    rto.sample(0.5)  # §2.2: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4·RTTVAR
    assert (rto.srtt_s, rto.rttvar_s, rto.rto_s) == (0.5, 0.25, 1.5)
    rto.sample(1.0)  # §2.3: RTTVAR = 3/4·0.25 + 1/4·|0.5 − 1.0|, then SRTT = 7/8·0.5 + 1/8·1.0
    assert (rto.srtt_s, rto.rttvar_s, rto.rto_s) == (0.5625, 0.3125, 1.8125)
    rto.backoff()  # §5.5
    rto.backoff()
    assert rto.rto_s == 7.25
    rto.sample(0.25)  # RTTVAR = 3/4·0.3125 + 1/4·0.3125, SRTT = 7/8·0.5625 + 1/8·0.25; backoff gone (§5.7)
    assert (rto.srtt_s, rto.rttvar_s, rto.rto_s) == (0.5234375, 0.3125, 1.7734375)
    assert rto.samples == 3


def test_rto_clock_granularity_and_clamps():
    coarse = RtoEstimator(min_rto_s=0.0, clock_granularity_s=0.125)
    coarse.sample(0.015625)  # 4·RTTVAR = 0.03125 < G
    assert coarse.rto_s == 0.015625 + 0.125
    floor = RtoEstimator()  # min RTO 0.2 s
    floor.sample(0.01)
    assert floor.rto_s == 0.2
    ceiling = RtoEstimator(max_rto_s=60.0)
    ceiling.sample(100.0)
    assert ceiling.rto_s == 60.0
    ceiling.backoff()
    assert ceiling.rto_s == 60.0
    assert RtoEstimator(initial_rto_s=0.1, min_rto_s=0.2).rto_s == 0.2


@pytest.mark.parametrize(
    "kwargs", [dict(initial_rto_s=0.0), dict(min_rto_s=-1.0), dict(max_rto_s=math.inf), dict(min_rto_s=2.0, max_rto_s=1.0)]
)
def test_rto_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        RtoEstimator(**kwargs)


@pytest.mark.parametrize("sample", [-0.1, math.nan, math.inf])
def test_rto_rejects_bad_samples(sample):
    with pytest.raises(ValueError):
        RtoEstimator().sample(sample)


# ---------------------------------------------------------------- configuration


def test_arq_config_parse():
    assert ArqConfig.parse("") == ArqConfig()
    config = ArqConfig.parse("window=64, min-rto=1s,max-rto=120s,initial-rto=3s,granularity=0s,dupthresh=off,"
                             "ack-bytes=52B,max-transmissions=50,sack-blocks=4")
    assert config == ArqConfig(window_packets=64, min_rto_s=1.0, max_rto_s=120.0, initial_rto_s=3.0,
                               clock_granularity_s=0.0, dupthresh=None, ack_bytes=52, max_transmissions=50,
                               sack_blocks=4)
    assert ArqConfig.parse("window=auto").window_packets is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("window=0", "window_packets must be >= 1"),
        ("window=-1", "not a whole number"),
        ("window=1.5", "not a whole number"),
        ("min-rto=2s,max-rto=1s", "greater than max_rto_s"),
        ("min-rto=200", "missing unit"),
        ("initial-rto=0s", "initial_rto_s must be"),
        ("dupthresh=0", "dupthresh must be >= 1"),
        ("sack-blocks=0", "sack_blocks must be >= 1"),
        ("windw=3", "unknown option 'windw'"),
        ("window=3,window=4", "given twice"),
        ("ack-bytes=1.5B", "not a whole number of bytes"),
    ],
)
def test_arq_config_parse_errors(text, fragment):
    with pytest.raises(LinkSpecError) as info:
        ArqConfig.parse(text)
    assert fragment in str(info.value) and str(info.value).splitlines() == [str(info.value)]


def test_simulate_arq_type_errors():
    with pytest.raises(TypeError):
        simulate_arq("100Mbps", 1000)
    with pytest.raises(TypeError):
        simulate_arq(Link(1e6), 1000.0)
    with pytest.raises(ValueError):
        simulate_arq(Link(1e6), -1)
    with pytest.raises(TypeError):
        simulate_arq(Link(1e6), 1000, config="window=3")
    with pytest.raises(TypeError, match="window_packets"):
        ArqConfig(window_packets=2.0)
