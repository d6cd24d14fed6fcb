"""The committed test vectors in ``tests/vectors/`` pin wire format v1 and the built-in codecs.

For every ``NAME.json`` / ``NAME.kvc`` pair (built by ``tests/vectors/make_vectors.py``):

- the committed bytes are the ones the JSON describes (length, sha256, section sizes);
- ``kvcodec.decode`` of the bytes gives exactly the expected cache (bitwise, as float64);
- re-encoding the JSON's input cache with its spec reproduces the committed bytes;
- ``kvcodec.inspect`` agrees on the sizes.

A failure here means the bytes on the wire or the decoded numbers changed. If that was
intended, bump the wire-format or codec version and regenerate the vectors.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch

import kvcodec
from kvcodec import KVCache, LayerKV

VECTORS = Path(__file__).resolve().parent / "vectors"
NAMES = sorted(p.stem for p in VECTORS.glob("*.json"))
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load(name: str) -> tuple[dict, bytes]:
    doc = json.loads((VECTORS / f"{name}.json").read_text())
    return doc, (VECTORS / doc["payload"]["file"]).read_bytes()


def build_cache(layers: list[dict]) -> KVCache:
    out = []
    for layer in layers:
        dtype = DTYPES[layer["dtype"]]
        keys = torch.tensor(layer["keys"], dtype=torch.float64).reshape(layer["keys_shape"]).to(dtype)
        values = torch.tensor(layer["values"], dtype=torch.float64).reshape(layer["values_shape"]).to(dtype)
        out.append(
            LayerKV(
                keys,
                values,
                torch.tensor(layer["positions"], dtype=torch.int64),
                layer["seen_tokens"],
                layer_type=layer["layer_type"],
                sliding_window=layer["sliding_window"],
            )
        )
    return KVCache(out)


def bits(values: list[float] | torch.Tensor) -> torch.Tensor:
    """float64 bit patterns (so -0.0 ≠ 0.0 and the comparison is exact)."""
    t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=torch.float64)
    return t.double().reshape(-1).view(torch.int64)


def test_vectors_exist():
    assert len(NAMES) >= 8
    assert sorted(p.stem for p in VECTORS.glob("*.kvc")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_bytes_match_their_description(name):
    doc, payload = load(name)
    assert len(payload) == doc["payload"]["length"] < 2048
    assert hashlib.sha256(payload).hexdigest() == doc["payload"]["sha256"]
    assert payload[:4] == b"KVCD" and payload[4:6] == bytes([1, 0])


@pytest.mark.parametrize("name", NAMES)
def test_decode_gives_the_expected_cache_exactly(name):
    doc, payload = load(name)
    cache = kvcodec.decode(payload)
    assert len(cache) == len(doc["expected"])
    for layer, want in zip(cache, doc["expected"]):
        assert str(layer.keys.dtype).replace("torch.", "") == want["dtype"]
        assert list(layer.keys.shape) == want["keys_shape"]
        assert list(layer.values.shape) == want["values_shape"]
        assert layer.positions.tolist() == want["positions"]
        assert layer.seen_tokens == want["seen_tokens"]
        assert layer.layer_type == want["layer_type"]
        assert layer.sliding_window == want["sliding_window"]
        assert torch.equal(bits(layer.keys), bits(want["keys"]))
        assert torch.equal(bits(layer.values), bits(want["values"]))


@pytest.mark.parametrize("name", NAMES)
def test_reencoding_the_input_reproduces_the_bytes(name):
    doc, payload = load(name)
    cache = build_cache(doc["input"])
    for layer, want in zip(cache, doc["input"]):  # the JSON round trip is exact
        assert torch.equal(bits(layer.keys), bits(want["keys"]))
        assert torch.equal(bits(layer.values), bits(want["values"]))
    again = kvcodec.encode(cache, doc["spec"])
    assert hashlib.sha256(again).hexdigest() == doc["payload"]["sha256"]
    assert again == payload
    # the canonical spec encodes to the same bytes
    assert kvcodec.encode(cache, doc["canonical_spec"]) == payload
    assert kvcodec.Pipeline.parse(doc["spec"]).describe() == doc["canonical_spec"]


@pytest.mark.parametrize("name", NAMES)
def test_inspect_agrees_on_sizes(name):
    doc, payload = load(name)
    info = kvcodec.inspect(payload)
    sizes = doc["payload"]
    assert info.total_bytes == sizes["total_bytes"] == len(payload)
    assert info.header_bytes == sizes["header_bytes"]
    assert [layer.wire_bytes for layer in info.layers] == sizes["layer_bytes"]
    assert info.header_bytes + sum(sizes["layer_bytes"]) == len(payload)
    assert info.version == doc["wire_version"]
    # the preamble's header_len and each section_len, read straight from the bytes
    (header_len,) = struct.unpack_from("<I", payload, 8)
    assert info.header_bytes == 12 + header_len + 4
    pos = info.header_bytes
    for layer in info.layers:
        (length,) = struct.unpack_from("<I", payload, pos)
        assert layer.wire_bytes == 4 + length + 4
        pos += layer.wire_bytes
    spec = kvcodec.Pipeline.parse(doc["spec"])
    for i, (layer, want) in enumerate(zip(info.layers, doc["input"])):
        assert layer.keys == spec.chain_for(i, "k").describe()
        assert layer.values == spec.chain_for(i, "v").describe()
        assert layer.seen_tokens == want["seen_tokens"]
        assert layer.seq_len == want["keys_shape"][2]
        assert layer.dtype == want["dtype"]


def test_worked_example_of_the_size_formula():
    """specs/wire-format.md §10.1: 2 layers of [1, 2, 8, 4] float32 with int4 is 803 bytes."""
    x = ((torch.arange(64).reshape(1, 2, 8, 4) * 7) % 13 - 6).float() / 4  # float16-exact statistics

    def stage(name: str, params: list[tuple[str, int]]) -> int:  # S: name, version, count, params
        return 1 + len(name) + 2 + 1 + sum(1 + len(key) + 1 + value for key, value in params)

    s_int = stage("int", [("bits", 8), ("axis", 2 + len("token")), ("group", 8), ("sym", 1)])
    header_len = 4 + 2 + 1 + 2 + (1 + s_int)
    n, groups = 64, 16

    def array(count: int, itemsize: int) -> int:  # a 4-D array: dtype, ndim, dims, data
        return 2 + 4 * 4 + count * itemsize

    block = 2 + (1 + (1 + 5 + array(groups, 2)) + (1 + 4 + array(groups, 2))) + 1 + (2 + 4 * 4 + n * 4 // 8)
    section = 4 + 23 + 2 * block + 4
    assert (s_int, header_len, block, section) == (55, 65, 165, 361)
    cache = KVCache([LayerKV.contiguous(x, -x), LayerKV.contiguous(x / 2, x * 3)])
    payload = kvcodec.encode(cache, "int4")
    assert len(payload) == 12 + header_len + 4 + 2 * section == 803
    info = kvcodec.inspect(payload)
    assert info.header_bytes == 81 and [layer.wire_bytes for layer in info.layers] == [361, 361]
