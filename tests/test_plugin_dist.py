"""A real third-party plugin found through entry points: the tiny distribution
``kvcodec-testplugin`` in ``tests/plugin_dist`` registers the ``negate`` codec.

Install it first (CI does)::

    pip install --no-build-isolation -e tests/plugin_dist
"""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from conftest import assert_same_structure, dtype_eps, expand_stats, make_cache

import kvcodec
from kvcodec import DecodeError
from kvcodec.api import encode_payload
from kvcodec.plugins import ENV_VAR, build_registry, get_registry

DIST = "kvcodec-testplugin"

try:
    _dist = importlib.metadata.distribution(DIST)
except importlib.metadata.PackageNotFoundError:
    _dist = None

pytestmark = [
    pytest.mark.skipif(
        _dist is None,
        reason=f"{DIST} is not installed; run: pip install --no-build-isolation -e tests/plugin_dist",
    ),
    pytest.mark.usefixtures("fresh_registry"),
]


@pytest.fixture(autouse=True)
def _all_plugins(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_distribution_declares_the_entry_point():
    eps = [ep for ep in _dist.entry_points if ep.group == "kvcodec"]
    assert [(ep.name, ep.value) for ep in eps] == [("negate", "kvcodec_testplugin")]


def test_negate_is_registered_with_its_distribution():
    info = get_registry().get("negate")
    assert info is not None
    assert info.provider == f"{_dist.metadata['Name']} {_dist.version}"
    assert info.provider.startswith(DIST + " ")
    assert info.plugin == "negate"
    assert info.family == "transform"
    assert info.cls.lossless and info.cls.accepts is kvcodec.Form.FLOAT and info.cls.produces is kvcodec.Form.FLOAT
    assert "negate" in get_registry().loaded


def test_negate_alone_is_lossless():
    cache = make_cache(seed=4, layers=2, dtype=torch.bfloat16, kind="sliding", extra_seen=5, window=9)
    data = kvcodec.encode(cache, "negate")
    out = kvcodec.decode(data)
    assert_same_structure(cache, out)
    for a, b in zip(cache, out):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert kvcodec.inspect(data).layers[0].keys == "negate"


def test_negate_then_int8_from_a_spec_string():
    p = kvcodec.Pipeline.parse("negate+int8")
    assert [s.name for s in p.chain_for(0, "k").stages] == ["negate", "int"]
    assert p.describe() == "negate+int8"
    cache = make_cache(seed=1, layers=2, heads=2, seq=12, head_dim=16)
    payload = encode_payload(cache, "negate+int8")
    out = kvcodec.decode(kvcodec.encode(cache, "negate+int8"))
    assert_same_structure(cache, out)
    for layer, got, enc in zip(cache, out, payload.layers):
        assert enc.keys.sides[0] == {}
        # the int8 stage saw −x: its zero point is −max(x) per token
        assert bool((enc.keys.sides[1]["zero"].float() <= (-layer.keys).amin(-1, keepdim=True)).all())
        step = expand_stats(enc.keys.sides[1]["scale"], tuple(layer.keys.shape), "token", 0)
        err = (got.keys.double() - layer.keys.double()).abs()
        assert bool((err <= step / 2 * (1 + 1e-4) + 4 * dtype_eps(torch.float32) * (layer.keys.abs() + step * 255)).all())
    assert kvcodec.inspect(kvcodec.encode(cache, "k=negate+int8 v=int4")).layers[1].keys == "negate+int8"


def test_plugin_can_be_excluded_and_then_its_payloads_cannot_be_decoded(monkeypatch):
    data = kvcodec.encode(make_cache(layers=1), "negate+int4")
    monkeypatch.setenv(ENV_VAR, "")
    reg = build_registry()
    assert reg.get("negate") is None
    with pytest.raises(DecodeError, match="unknown codec 'negate' .*plugin"):
        kvcodec.decode(data, registry=reg)
    monkeypatch.setenv(ENV_VAR, DIST)
    assert build_registry().get("negate") is not None
    monkeypatch.setenv(ENV_VAR, "negate")
    assert build_registry().get("negate") is not None


def test_negate_rejects_bad_side_information():
    info = get_registry().get("negate")
    stage = info.cls()
    with pytest.raises(DecodeError):
        stage.decode(torch.ones(2, dtype=torch.int32), {})
    with pytest.raises(DecodeError):
        stage.decode(torch.ones(2), {"scale": torch.ones(1)})
