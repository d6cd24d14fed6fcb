"""The empirical entropy of a payload's codes (kvcodec.codestats), as records report it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvcodec
from kvcodec import api, wire
from kvcodec.codec import Codes
from kvcodec.codestats import code_entropy_bits, stream_entropy_bits
from kvcodec.roundtrip import RoundTripper, round_trip
from kvcodec.testing.caches import make_cache
from kvcodec_builtins.entropy.stats import entropy_bits


def test_a_single_symbol_has_no_entropy_and_two_equiprobable_ones_one_bit():
    assert stream_entropy_bits(Codes(torch.zeros(1, 2, 3, 4, dtype=torch.uint8), 4)) == 0.0
    codes = torch.tensor([0, 1] * 6, dtype=torch.uint8).reshape(1, 1, 3, 4)
    assert stream_entropy_bits(Codes(codes, 1)) == pytest.approx(12.0)


def test_each_kv_head_is_its_own_stream():
    # head 0 all zeros, head 1 all ones: each stream is constant, so 0 bits (one pooled stream would hold 1 bit per code)
    codes = torch.stack([torch.zeros(3, 4), torch.ones(3, 4)]).to(torch.uint8)[None]
    assert stream_entropy_bits(Codes(codes, 1)) == 0.0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 9), st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**31))
def test_it_equals_the_ans_stage_bound_with_per_head_tables(b, h, t, d, bits, seed):
    g = np.random.default_rng(seed)
    codes = Codes(torch.from_numpy(g.integers(0, 2**bits, size=(b, h, t, d)).astype(np.uint8)), bits)
    assert stream_entropy_bits(codes) == pytest.approx(entropy_bits(codes, "head"), rel=1e-12, abs=1e-9)


@pytest.fixture(scope="module")
def cache():
    return make_cache(seed=3, layers=2)


def test_the_coded_payload_reports_the_entropy_of_the_codes_it_carries(cache):
    plain = code_entropy_bits(api.encode_payload(cache, "int4"))
    coded = code_entropy_bits(wire.load(kvcodec.encode(cache, "int4+ans")))
    zstd = code_entropy_bits(wire.load(kvcodec.encode(cache, "int4+zstd")))
    assert plain is not None and plain > 0
    assert coded == pytest.approx(plain) and zstd == pytest.approx(plain)
    # no order-0 per-head coder beats the bound: the whole ans payload is longer than H bits
    assert 8 * len(kvcodec.encode(cache, "int4+ans")) > plain


def test_codes_after_a_code_delta_are_the_ones_measured(cache):
    delta = code_entropy_bits(wire.load(kvcodec.encode(cache, "int4:axis=channel+cdelta+ans")))
    plain = code_entropy_bits(wire.load(kvcodec.encode(cache, "int4:axis=channel")))
    assert delta is not None and not math.isclose(delta, plain)


def test_nothing_quantized_means_no_figure(cache):
    assert code_entropy_bits(api.encode_payload(cache, "fp16")) is None
    mixed = code_entropy_bits(api.encode_payload(cache, "int8 L0=identity"))
    everything = code_entropy_bits(api.encode_payload(cache, "int8"))
    assert mixed is not None and mixed < everything


def test_round_trips_carry_it_in_process_and_from_workers(cache):
    local = round_trip(cache, "int3+ans")
    assert local.code_entropy_bits == pytest.approx(code_entropy_bits(api.encode_payload(cache, "int3")))
    assert round_trip(cache, "int3+ans", keep=False).code_entropy_bits is None
    with RoundTripper(1) as tripper:
        remote = tripper.submit(cache, ["int3+ans", "fp16"])
        got = [f.result() for f in remote]
    assert got[0].code_entropy_bits == pytest.approx(local.code_entropy_bits) and got[1].code_entropy_bits is None
