"""Tests of kvcodec_sim's bandwidth traces: exact serialization across rate changes, file parsing."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcodec_sim import ArqConfig, BandwidthTrace, Channel, Link, LinkSpecError, simulate_arq
from kvcodec_sim.path import Path

# 8 kbit/s for 1 s, an outage of 1 s, then 16 kbit/s for ever (dyadic numbers: exact in floats)
TRACE = BandwidthTrace([0.0, 1.0, 2.0], [8000.0, 0.0, 16000.0])


# ---------------------------------------------------------------- integration, by hand


@pytest.mark.parametrize(
    ("start", "bits", "end"),
    [
        (0.0, 8000, 1.0),  # ends exactly where the outage begins: not at its end
        (0.0, 4000, 0.5),
        (0.5, 12000, 2.5),  # 4000 bits at 8 kbit/s until 1.0, wait out the outage, 8000 bits at 16 kbit/s
        (1.5, 2000, 2.125),  # starts inside the outage
        (1.0, 16000, 3.0),
        (3.0, 16000, 4.0),  # after the last row its rate holds
        (0.25, 0, 0.25),
        (0.0, 24000, 3.0),  # 8000 bits, the outage, 16000 bits at 16 kbit/s
    ],
)
def test_finish_time_by_hand(start, bits, end):
    assert TRACE.finish_time(start, bits) == end


def test_rate_and_cumulative_bits():
    assert [TRACE.rate_at(t) for t in (0.0, 0.999, 1.0, 1.5, 2.0, 100.0)] == [8000, 8000, 0, 0, 16000, 16000]
    assert [TRACE.bits_by(t) for t in (0.0, 0.5, 1.0, 1.5, 2.0, 2.5)] == [0, 4000, 8000, 8000, 8000, 16000]
    assert TRACE.max_rate_bps == 16000


def test_path_serializes_back_to_back_across_rate_changes():
    path = Path(TRACE, latency_s=0.5)
    assert path.send(0.0, 1000) == 1.5  # 8000 bits end at 1.0, + 0.5 s propagation
    assert path.send(0.0, 1500) == 3.25  # waits for the first, the outage, then 12000 bits at 16 kbit/s
    assert path.busy_until_s == 2.75
    assert path.send(10.0, 2) == 10.001 + 0.5  # idle link: starts when handed over


def test_non_dyadic_rate_change():
    trace = BandwidthTrace([0, 0.001], [1e6, 2e6])  # 1000 bits in the first ms, then 2 Mbit/s
    assert math.isclose(trace.finish_time(0.0, 12000), 0.001 + 11000 / 2e6, rel_tol=1e-15)


def reference_finish_time(times, rates, start, bits):
    """Walk the rows one by one (the obvious algorithm) to cross-check the bisection."""
    t, remaining = start, bits
    for i, rate in enumerate(rates):
        stop = times[i + 1] if i + 1 < len(times) else math.inf
        if stop <= t:
            continue
        if rate > 0 and remaining <= rate * (stop - t):
            return t + remaining / rate
        remaining -= rate * (stop - t)
        t = stop
    raise AssertionError("unreachable: the last rate is > 0")


@settings(max_examples=300)
@given(
    gaps=st.lists(st.floats(1e-3, 10.0), min_size=0, max_size=8),
    rates=st.data(),
    start=st.floats(0.0, 50.0),
    bits=st.floats(1.0, 1e6),
)
def test_finish_time_matches_walking_the_rows(gaps, rates, start, bits):
    times = [0.0]
    for gap in gaps:
        times.append(times[-1] + gap)
    values = rates.draw(st.lists(st.one_of(st.just(0.0), st.floats(1.0, 1e6)), min_size=len(times), max_size=len(times)))
    values[-1] = values[-1] or 1000.0
    trace = BandwidthTrace(times, values)
    end = trace.finish_time(start, bits)
    assert end >= start
    assert math.isclose(end, reference_finish_time(times, values, start, bits), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(trace.bits_by(end) - trace.bits_by(start), bits, rel_tol=1e-6, abs_tol=1e-6)


def test_constant_trace_matches_constant_link():
    link = Link.parse("100Mbps", latency="5ms")
    nbytes = 300 * link.payload_per_packet + 17
    plain = simulate_arq(link, nbytes)
    traced = simulate_arq(Channel(link, trace=BandwidthTrace([0.0], [1e8])), nbytes)
    assert math.isclose(traced.delivery_time_s, plain.delivery_time_s, rel_tol=1e-12)
    assert math.isclose(plain.delivery_time_s, link.closed_form_time(nbytes), rel_tol=1e-12)


def test_arq_over_a_trace_by_hand():
    # 1 packet of 1000 B wire (960 B payload + 40 B header) = 8000 bits ends at 1.0 s on TRACE.
    link = Link(bandwidth_bps=1e6, latency_s=0.25, mtu_bytes=1000, header_bytes=40)
    result = simulate_arq(Channel(link, trace=TRACE), 960, config=ArqConfig(window_packets=1))
    assert result.delivery_time_s == 1.25
    # ACK: 40 B at the nominal 1 Mbit/s (the trace shapes the data direction only) + 0.25 s
    assert result.sender_done_s == 1.25 + 320e-6 + 0.25


# ---------------------------------------------------------------- files


def test_parse_text_with_comments_commas_and_blank_lines():
    text = "\ufeff# time_s bit_per_s\n\n0, 100e6\r\n1.5\t20e6   # slower\n2 ,0\n2.25 1e8\n"
    trace = BandwidthTrace.parse(text.lstrip("\ufeff"), source="x")
    assert trace == BandwidthTrace([0, 1.5, 2, 2.25], [1e8, 2e7, 0, 1e8])
    assert trace.source == "x"


def test_load_file(tmp_path):
    path = tmp_path / "lte.csv"
    path.write_bytes("\ufeff0 8000\n1 0\n2 16000\n".encode())  # a BOM is allowed
    assert BandwidthTrace.load(path) == TRACE
    channel = Channel.parse(f"1Mbps,trace={path}")
    assert channel.trace == TRACE and channel.link.bandwidth_bps == 1e6


BAD_FILES = [
    ("", "no rows"),
    ("# only a comment\n\n", "no rows"),
    ("0 100\n1\n", "line 2: expected 2 fields, got 1"),
    ("0 100 5\n", "line 1: expected 2 fields, got 3"),
    ("0,,100\n", "expected 2 fields, got 3"),
    ("0 abc\n", "line 1: rate 'abc' is not a plain number"),
    ("0 -5\n", "negative rate"),
    ("-1 5\n", "negative time"),
    ("1 100\n", "line 1: the first row must start at time 0"),
    ("0 100\n0 200\n", "line 2: time 0.0 is not after"),
    ("0 100\n\n# gap\n2 200\n1 300\n", "line 5: time 1.0 is not after"),
    ("0 100\n1 0\n", "line 2: the last rate holds for ever and must be > 0"),
    ("0 1e400\n", "too large"),
    ("0 nan\n", "not a plain number"),
    ("0 inf\n", "not a plain number"),
    ("0 100Mbps\n", "not a plain number"),
    ("0 +100\n", "not a plain number"),
]


@pytest.mark.parametrize(("content", "fragment"), BAD_FILES)
def test_malformed_files_give_one_line_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(LinkSpecError) as info:
        BandwidthTrace.load(path)
    message = str(info.value)
    assert message.splitlines() == [message]
    assert fragment in message and "bad.txt" in message


def test_unreadable_files(tmp_path):
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"0 100\n\xff\xfe\x00garbage")
    cases = [(tmp_path / "missing.csv", "cannot read"), (tmp_path, "cannot read"), (binary, "not UTF-8")]
    for path, fragment in cases:
        with pytest.raises(LinkSpecError) as info:
            BandwidthTrace.load(path)
        assert fragment in str(info.value) and str(info.value).splitlines() == [str(info.value)]
    with pytest.raises(LinkSpecError, match="trace=") as info:
        Channel.parse(f"1Mbps,trace={tmp_path / 'missing.csv'}")
    assert str(info.value).splitlines() == [str(info.value)]


@pytest.mark.parametrize(
    ("times", "rates", "fragment"),
    [
        ([], [], "no rows"),
        ([0, 1], [5], "2 times but 1 rates"),
        ([0.5], [5], "start at time 0"),
        ([0, 1, 1], [5, 5, 5], "row 2"),
        ([0, 1], [5, -1], "row 1"),
        ([0, 1], [5, math.inf], "row 1"),
        ([0, math.nan], [5, 5], "row 1"),
        ([0], [0], "must be > 0"),
    ],
)
def test_constructor_checks_rows(times, rates, fragment):
    with pytest.raises(LinkSpecError, match=fragment):
        BandwidthTrace(times, rates)


def test_constructor_type_errors():
    with pytest.raises(TypeError):
        BandwidthTrace(["a"], [1.0])
    with pytest.raises(TypeError):
        BandwidthTrace.parse(b"0 1")
