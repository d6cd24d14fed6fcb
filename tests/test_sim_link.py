"""Tests of kvcodec_sim's link model: unit parsing, packetization, closed form and SimPy simulation.

Run with ``PYTHONPATH=sim`` (kvcodec_sim lives in ``sim/``).
"""

from __future__ import annotations

import doctest
import math
import os
import subprocess
import sys
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kvcodec_sim
from kvcodec_sim import (
    Link,
    LinkSpecError,
    TransferResult,
    parse_bandwidth,
    parse_duration,
    parse_size,
    simulate_transfer,
)

EPS = sys.float_info.epsilon


def sim_tolerance(packets: int) -> float:
    """Relative error bound of the simulation against the closed form.

    The sender adds one rounded serialization delay per packet, each addition rounding once,
    and the closed form rounds a few times: at most ``(packets + 2) * eps`` relative.
    """
    return (packets + 2) * EPS


# ---------------------------------------------------------------- units: valid forms


@pytest.mark.parametrize(
    ("text", "bits_per_s"),
    [
        ("100Mbps", 1e8),
        ("1Gbps", 1e9),
        ("10Gbit/s", 1e10),
        ("12.5MB/s", 1e8),
        ("800kbps", 8e5),
        ("800kbit/s", 8e5),
        ("800Kbps", 8e5),
        ("1.5 Mbit/s", 1.5e6),
        ("56000bps", 56000.0),
        ("1e9bps", 1e9),
        ("2.5E3kbps", 2.5e6),
        ("1Tbps", 1e12),
        ("100 Mb/s", 1e8),
        ("1GBps", 8e9),
        ("1B/s", 8.0),
        (".5Gbps", 5e8),
        ("1.1Mbps", 1.1e6),  # read exactly: 1.1 * 1e6 in float arithmetic would be 1100000.0000000002
        ("  100Mbps\n", 1e8),
        ("100\tMbps", 1e8),
    ],
)
def test_parse_bandwidth_examples(text, bits_per_s):
    assert parse_bandwidth(text) == bits_per_s


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10ms", 0.01),
        ("0.5s", 0.5),
        ("250us", 250e-6),
        ("250µs", 250e-6),  # micro sign U+00B5
        ("250μs", 250e-6),  # Greek mu U+03BC
        ("20 ms", 0.02),
        ("100ns", 1e-7),
        ("0s", 0.0),
        ("0ms", 0.0),
        ("1e-3s", 0.001),
        ("1.5s", 1.5),
    ],
)
def test_parse_duration_examples(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [("1500", 1500), ("9000B", 9000), ("9kB", 9000), ("9KB", 9000), ("64 kB", 64000), ("1.5kB", 1500),
     ("1MB", 10**6), ("1GB", 10**9), ("0", 0), ("1e3", 1000)],
)
def test_parse_size_examples(text, nbytes):
    value = parse_size(text)
    assert value == nbytes and type(value) is int


_BANDWIDTH_SCALE = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_RATE_UNIT_BITS = {"bps": 1, "b/s": 1, "bit/s": 1, "Bps": 8, "B/s": 8}


@given(
    mantissa=st.integers(1, 10**12),
    point=st.integers(0, 6),
    prefix=st.sampled_from(sorted(_BANDWIDTH_SCALE)),
    unit=st.sampled_from(sorted(_RATE_UNIT_BITS)),
    space=st.sampled_from(["", " ", "  ", "\t"]),
)
def test_parse_bandwidth_follows_grammar(mantissa, point, prefix, unit, space):
    digits = str(mantissa).rjust(point + 1, "0")
    number = digits[: len(digits) - point] + ("." + digits[len(digits) - point :] if point else "")
    expected = float(Decimal(number) * _BANDWIDTH_SCALE[prefix] * _RATE_UNIT_BITS[unit])
    assert parse_bandwidth(f"{number}{space}{prefix}{unit}") == expected


# ---------------------------------------------------------------- units: malformed forms

BAD_BANDWIDTHS = [
    "",
    "   ",
    "-100Mbps",
    "0bps",
    "0.0Gbps",
    "100",  # no unit: bits or bytes?
    "100Mbs",
    "100mbps",  # m is milli, not mega
    "100 Mibps",  # binary prefixes are not part of the grammar
    "100Mbit",
    "nan",
    "nanbps",
    "infbps",
    "Infinity Mbps",
    "1e400bps",  # overflows float
    "1e-400bps",  # rounds to zero
    "1e99999999999999999999bps",  # beyond decimal's exponent range
    "Mbps",
    "fast",
    "1 00Mbps",
    "100Mbps extra",
    "+100Mbps",
    "1_000bps",
    "١٠٠Mbps",  # non-ASCII digits
    "100 M bps",
    "1\n2Mbps",
]

BAD_DURATIONS = ["", "10", "-10ms", "10 sec", "10m", "1h", "nan", "infs", "1e400s", "ms", "10 m s", "1,5ms"]

BAD_SIZES = ["", "-1500", "1500b", "1500 bytes", "1.5B", "1.5", "1KiB", "1e30B", "1e99999999999999999B", "nan", "B", "9k"]


def _assert_one_line_naming(err: LinkSpecError, text: str) -> None:
    message = str(err)
    assert message.splitlines() == [message], message
    assert repr(text) in message
    assert "e.g." in message


@pytest.mark.parametrize("text", BAD_BANDWIDTHS)
def test_parse_bandwidth_rejects_malformed(text):
    with pytest.raises(LinkSpecError) as info:
        parse_bandwidth(text)
    _assert_one_line_naming(info.value, text)
    assert "100Mbps" in str(info.value)  # gives examples of valid forms


@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_parse_duration_rejects_malformed(text):
    with pytest.raises(LinkSpecError) as info:
        parse_duration(text)
    _assert_one_line_naming(info.value, text)
    assert "10ms" in str(info.value)


@pytest.mark.parametrize("text", BAD_SIZES)
def test_parse_size_rejects_malformed(text):
    with pytest.raises(LinkSpecError) as info:
        parse_size(text)
    _assert_one_line_naming(info.value, text)
    assert "9000B" in str(info.value)


def test_link_spec_error_is_a_value_error():
    assert issubclass(LinkSpecError, ValueError)


def test_long_bad_text_is_shortened_in_the_message():
    with pytest.raises(LinkSpecError) as info:
        parse_bandwidth("x" * 10_000)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("parse", [parse_bandwidth, parse_duration, parse_size])
@pytest.mark.parametrize("value", [100, 1e8, None, b"100Mbps"])
def test_parsers_refuse_non_strings(parse, value):
    with pytest.raises(TypeError):
        parse(value)


@settings(max_examples=500)
@given(st.text())
def test_random_text_raises_only_link_spec_error(text):
    for parse in (parse_bandwidth, parse_duration, parse_size):
        try:
            value = parse(text)
        except LinkSpecError as err:
            assert str(err).splitlines() == [str(err)]
            continue
        if parse is parse_bandwidth:
            assert math.isfinite(value) and value > 0
        elif parse is parse_duration:
            assert math.isfinite(value) and value >= 0
        else:
            assert type(value) is int and 0 <= value < 2**63


@settings(max_examples=300)
@given(st.text(alphabet="0123456789.eE+- \tkKMGTbBpsitu/µn"))
def test_random_unit_like_text_raises_only_link_spec_error(text):
    for parse in (parse_bandwidth, parse_duration, parse_size):
        try:
            parse(text)
        except LinkSpecError:
            pass


# ---------------------------------------------------------------- Link


def test_link_defaults():
    link = Link(1e8)
    assert (link.latency_s, link.mtu_bytes, link.header_bytes, link.payload_per_packet) == (0.0, 1500, 40, 1460)


def test_link_parse():
    link = Link.parse("100Mbps", latency="10ms", mtu="9000B", header_bytes="52B")
    assert link == Link(bandwidth_bps=1e8, latency_s=0.01, mtu_bytes=9000, header_bytes=52)
    assert Link.parse("1Gbps", latency=0.025, mtu=1500, header_bytes=40) == Link(1e9, 0.025)
    assert Link.parse("1Gbps") == Link(1e9)


def test_link_converts_numbers():
    link = Link(bandwidth_bps=100, latency_s=1, mtu_bytes=np.int64(1500), header_bytes=np.int32(40))
    assert type(link.bandwidth_bps) is float and type(link.latency_s) is float
    assert type(link.mtu_bytes) is int and type(link.header_bytes) is int


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(bandwidth_bps=0), "bandwidth_bps"),
        (dict(bandwidth_bps=-1e6), "bandwidth_bps"),
        (dict(bandwidth_bps=math.inf), "bandwidth_bps"),
        (dict(bandwidth_bps=math.nan), "bandwidth_bps"),
        (dict(bandwidth_bps=1e6, latency_s=-0.001), "latency_s"),
        (dict(bandwidth_bps=1e6, latency_s=math.nan), "latency_s"),
        (dict(bandwidth_bps=1e6, latency_s=math.inf), "latency_s"),
        (dict(bandwidth_bps=1e6, mtu_bytes=0), "mtu_bytes"),
        (dict(bandwidth_bps=1e6, mtu_bytes=40), "header_bytes"),  # header must be < MTU
        (dict(bandwidth_bps=1e6, header_bytes=1500), "header_bytes"),
        (dict(bandwidth_bps=1e6, header_bytes=-1), "header_bytes"),
    ],
)
def test_link_rejects_out_of_range_fields(kwargs, field):
    with pytest.raises(LinkSpecError, match=field):
        Link(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(bandwidth_bps="100Mbps"), "bandwidth_bps"),
        (dict(bandwidth_bps=True), "bandwidth_bps"),
        (dict(bandwidth_bps=1e6, latency_s="10ms"), "latency_s"),
        (dict(bandwidth_bps=1e6, mtu_bytes=1500.0), "mtu_bytes"),
        (dict(bandwidth_bps=1e6, header_bytes=False), "header_bytes"),
    ],
)
def test_link_rejects_wrong_types(kwargs, field):
    with pytest.raises(TypeError, match=field):
        Link(**kwargs)


def test_link_parse_rejects_bad_strings():
    with pytest.raises(LinkSpecError):
        Link.parse("100")
    with pytest.raises(LinkSpecError):
        Link.parse("100Mbps", latency="10")
    with pytest.raises(LinkSpecError):
        Link.parse("100Mbps", mtu="1500b")
    with pytest.raises(LinkSpecError, match="header_bytes"):
        Link.parse("100Mbps", mtu="40B")


def test_link_is_frozen():
    link = Link(1e8)
    with pytest.raises(AttributeError):
        link.bandwidth_bps = 1.0


def test_header_overhead_counted():
    # 1,000,000 B at MTU 1500 / 40 B headers: 1460 B per packet, 684 full packets carry
    # 998,640 B and a 685th carries the remaining 1,360 B; headers add 685 * 40 = 27,400 B.
    link = Link.parse("100Mbps", latency="10ms")
    assert link.packet_count(1_000_000) == 685
    assert link.last_packet_payload(1_000_000) == 1360
    assert link.wire_bytes(1_000_000) == 1_027_400
    assert link.serialization_delay(1_000_000) == pytest.approx(0.082192, rel=1e-15)
    assert link.closed_form_time(1_000_000) == pytest.approx(0.092192, rel=1e-15)
    result = simulate_transfer(link, 1_000_000, record_packets=True)
    assert (result.packets, result.wire_bytes) == (685, 1_027_400)
    assert result.packet_wire_bytes[-1] == 1400 and (result.packet_wire_bytes[:-1] == 1500).all()
    assert math.isclose(result.delivery_time_s, 0.092192, rel_tol=sim_tolerance(685))


@pytest.mark.parametrize(
    ("nbytes", "packets", "last"),
    [(0, 0, 0), (1, 1, 1), (1459, 1, 1459), (1460, 1, 1460), (1461, 2, 1), (2920, 2, 1460), (2921, 3, 1)],
)
def test_packetization_boundaries(nbytes, packets, last):
    link = Link(1e8)
    assert link.packet_count(nbytes) == packets
    assert link.last_packet_payload(nbytes) == last
    assert link.wire_bytes(nbytes) == nbytes + 40 * packets


@given(
    mtu=st.integers(1, 65_535),
    data=st.data(),
    nbytes=st.integers(0, 10**15),
)
def test_packetization_invariants(mtu, data, nbytes):
    header = data.draw(st.integers(0, mtu - 1))
    link = Link(1e9, mtu_bytes=mtu, header_bytes=header)
    packets = link.packet_count(nbytes)
    payload = link.payload_per_packet
    assert payload == mtu - header
    assert (packets - 1) * payload < nbytes <= packets * payload or nbytes == packets == 0
    assert link.wire_bytes(nbytes) == nbytes + packets * header
    last = link.last_packet_payload(nbytes)
    assert (packets - 1) * payload + last == nbytes if packets else last == 0
    assert 0 < last <= payload or nbytes == 0


@pytest.mark.parametrize("nbytes", [-1, 1.5, 1000.0, "1000", True, None])
def test_payload_size_must_be_a_whole_number_of_bytes(nbytes):
    link = Link(1e8)
    with pytest.raises((TypeError, ValueError)):
        link.packet_count(nbytes)
    with pytest.raises((TypeError, ValueError)):
        link.closed_form_time(nbytes)
    with pytest.raises((TypeError, ValueError)):
        simulate_transfer(link, nbytes)


def test_empty_payload_sends_nothing():
    link = Link.parse("100Mbps", latency="10ms")
    assert (link.packet_count(0), link.wire_bytes(0), link.closed_form_time(0)) == (0, 0, 0.0)
    result = simulate_transfer(link, 0, record_packets=True)
    assert result == TransferResult(
        payload_bytes=0, wire_bytes=0, packets=0, delivery_time_s=0.0, first_arrival_s=None, goodput_bps=0.0
    )
    assert result.packet_arrived_at_s.shape == (0,)


# ---------------------------------------------------------------- simulation vs closed form

links = st.builds(
    lambda bandwidth, latency, mtu, header_fraction: Link(
        bandwidth, latency, mtu, min(mtu - 1, int(header_fraction * mtu))
    ),
    bandwidth=st.floats(1e3, 1e12),
    latency=st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
    mtu=st.integers(2, 9216),
    header_fraction=st.floats(0.0, 0.99),
)


@settings(max_examples=150, deadline=None)
@given(link=links, data=st.data())
def test_simulation_agrees_with_closed_form(link, data):
    nbytes = data.draw(st.integers(0, 400 * link.payload_per_packet), label="nbytes")
    result = simulate_transfer(link, nbytes, record_packets=True)
    packets = link.packet_count(nbytes)
    assert result.payload_bytes == nbytes
    assert result.packets == packets
    assert result.wire_bytes == link.wire_bytes(nbytes)
    assert math.isclose(result.delivery_time_s, link.closed_form_time(nbytes), rel_tol=sim_tolerance(packets))
    if packets == 0:
        assert result.first_arrival_s is None and result.goodput_bps == 0.0
        return
    first_packet_payload = min(nbytes, link.payload_per_packet)
    assert math.isclose(result.first_arrival_s, link.closed_form_time(first_packet_payload), rel_tol=sim_tolerance(1))
    assert result.goodput_bps == nbytes * 8 / result.delivery_time_s

    sizes, sent, arrived = result.packet_wire_bytes, result.packet_sent_at_s, result.packet_arrived_at_s
    assert sizes.dtype == np.int64 and sent.dtype == arrived.dtype == np.float64
    assert sizes.sum() == result.wire_bytes
    assert (sizes - link.header_bytes).sum() == nbytes
    assert sent[0] == 0.0 and (np.diff(sent) > 0).all() and (np.diff(arrived) >= 0).all()
    serialization = sizes * 8 / link.bandwidth_bps
    np.testing.assert_allclose(arrived, sent + serialization + link.latency_s, rtol=sim_tolerance(packets), atol=0)
    np.testing.assert_allclose(sent[1:], sent[:-1] + serialization[:-1], rtol=sim_tolerance(packets), atol=0)
    assert arrived[-1] == result.delivery_time_s and arrived[0] == result.first_arrival_s


def test_packets_propagate_concurrently():
    # 1000 packets of 1500 B at 1 Gbit/s take 12 ms to serialize; a 100 ms propagation delay
    # is paid once, not once per packet.
    link = Link.parse("1Gbps", latency="100ms")
    result = simulate_transfer(link, 1000 * link.payload_per_packet)
    assert math.isclose(result.delivery_time_s, 0.012 + 0.1, rel_tol=sim_tolerance(1000))
    assert math.isclose(result.first_arrival_s, 12e-6 + 0.1, rel_tol=sim_tolerance(1))


def test_result_arrays_are_read_only_and_optional():
    link = Link(1e8)
    assert simulate_transfer(link, 5000).packet_arrived_at_s is None
    recorded = simulate_transfer(link, 5000, record_packets=True)
    with pytest.raises(ValueError):
        recorded.packet_arrived_at_s[0] = 0.0
    assert recorded == simulate_transfer(link, 5000)  # arrays are left out of ==


def test_simulate_transfer_needs_a_link():
    with pytest.raises(TypeError):
        simulate_transfer("100Mbps", 1000)


def test_hundred_thousand_packets():
    link = Link.parse("10Gbps", latency="10ms")
    nbytes = 100_000 * link.payload_per_packet
    result = simulate_transfer(link, nbytes)  # its speed is shown by benchmarks/bench_link.py
    assert result.packets == 100_000
    assert math.isclose(result.delivery_time_s, link.closed_form_time(nbytes), rel_tol=sim_tolerance(100_000))


# ---------------------------------------------------------------- package hygiene


def test_package_docstring_example():
    assert doctest.testmod(kvcodec_sim).failed == 0


def test_sim_imports_no_torch_transformers_or_kvcodec():
    code = (
        "import importlib, pkgutil, sys, kvcodec_sim\n"
        "for module in pkgutil.iter_modules(kvcodec_sim.__path__):\n"
        "    importlib.import_module('kvcodec_sim.' + module.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'kvcodec'))\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    completed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
