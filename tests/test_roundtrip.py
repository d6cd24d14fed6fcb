"""Round trips in this process and in worker processes give the same bytes and caches."""

import pytest
import torch

from kvcodec import api
from kvcodec.errors import CodecError
from kvcodec.roundtrip import RoundTripper, cache_from_arrays, cache_to_arrays, round_trip

from conftest import assert_same_structure, make_cache

SPECS = ["int4", "k=int4:axis=channel v=int2", "identity L0=int8", "fp16"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_arrays_transport_is_exact(dtype):
    cache = make_cache(seed=3, layers=3).to(dtype=dtype)
    back = cache_from_arrays(cache_to_arrays(cache))
    assert_same_structure(cache, back)
    for a, b in zip(cache, back):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        assert torch.equal(a.positions, b.positions)


def test_round_trip_counts_the_payload():
    cache = make_cache(seed=1, layers=2)
    trip = round_trip(cache, "int4")
    payload = api.encode(cache, "int4")
    assert trip.nbytes == len(payload)
    expect = api.decode(payload)
    assert all(torch.equal(a.keys, b.keys) for a, b in zip(trip.cache, expect))
    assert round_trip(cache, "int4", keep=False).cache is None


def test_workers_match_in_process():
    cache = make_cache(seed=7, layers=3).to(dtype=torch.bfloat16)
    keep = [True, True, False, True]
    with RoundTripper(0) as local:
        here = [f.result() for f in local.submit(cache, SPECS, keep)]
    with RoundTripper(2) as pool:
        there = [f.result() for f in pool.submit(cache, SPECS, keep)]
    for a, b, k in zip(here, there, keep):
        assert (a.spec, a.nbytes) == (b.spec, b.nbytes)
        if not k:
            assert a.cache is None and b.cache is None
            continue
        assert_same_structure(a.cache, b.cache)
        for la, lb in zip(a.cache, b.cache):
            assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_failing_pipeline_fails_only_its_own_future(workers):
    cache = make_cache(seed=2, layers=2)  # 2 layers: L5 is out of range
    with RoundTripper(workers) as tripper:
        bad, good = tripper.submit(cache, ["int4 L5=int8", "int8"])
        with pytest.raises(CodecError):
            bad.result()
        assert good.result().nbytes == len(api.encode(cache, "int8"))


def test_negative_workers_rejected():
    with pytest.raises(ValueError):
        RoundTripper(-1)
