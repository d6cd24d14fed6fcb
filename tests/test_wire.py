"""Wire format v1 (``kvcodec.wire``): exact byte counts from an independent formula,
compression ratios, canonical re-serialization, and a decoder that treats bytes as
untrusted — truncations, flips, overwrites, insertions and hand-crafted malformed
payloads must raise :class:`kvcodec.DecodeError` (never another exception, never a hang,
never a silently different tensor), with messages that say what is wrong."""

from __future__ import annotations

import math
import struct
import time
import zlib

import pytest
import torch
from conftest import (
    assert_same_structure,
    ceil_div,
    join_payload,
    kv_caches,
    make_cache,
    pipeline_specs,
    split_payload,
    time_limit,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import kvcodec
from kvcodec import DecodeError, KVCache, LayerKV, Pipeline, wire
from kvcodec.api import encode_payload
from kvcodec.plugins import Registry, get_registry

# ----------------------------------------------------------------------------- independent size formula
# parameter layout of the built-in stages on the wire: (name, tag) in declaration order
PARAMS = {
    "int": (("bits", "i"), ("axis", "s"), ("group", "i"), ("sym", "b")),
    "sign": (("axis", "s"), ("group", "i")),
    "identity": (),
    "fp16": (),
    "negate": (),
}
ITEMSIZE = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}
GEOMETRY = 2 + 1 + 4 + 4 + 1 + 2 + 4 + 2 + 2 + 1  # index, type, window, seen, dtype, heads, seq, dk, dv, pos mode


def stage_bytes(stage) -> int:
    n = 1 + len(stage.name) + 2 + 1  # str8 name, u16 version, u8 param count
    for key, tag in PARAMS[stage.name]:
        value = getattr(stage, key)
        n += 1 + len(key) + 1 + {"b": 1, "i": 8, "f": 8}.get(tag, 0)
        if tag == "s":
            n += 2 + len(value.encode())
    return n


def array_bytes(name: str, ndim: int, nbytes: int) -> int:
    return 1 + len(name) + 1 + 1 + 4 * ndim + nbytes


def side_arrays(stage, shape, side_dtypes) -> int:
    """Bytes of one stage's side information for a [B,H,T,D] input, computed from the
    stage parameters alone (the fp16/fp32 choice of each array is data-dependent: given)."""
    b, h, t, d = shape
    if stage.name in ("identity", "fp16", "negate"):
        return 0
    if stage.axis == "token":
        stats = (b, h, t, d // (stage.group or d))
    else:
        stats = (b, h, d, ceil_div(t, min(stage.group or t, t)))
    names = ["scale"] if stage.name == "sign" or stage.sym else ["scale", "zero"]
    assert sorted(names) == sorted(side_dtypes)
    return sum(array_bytes(n, 4, math.prod(stats) * ITEMSIZE[side_dtypes[n]]) for n in names)


def block_bytes(chain, x: torch.Tensor, sides) -> int:
    n = 2  # chain index
    for stage, side in zip(chain.stages, sides):
        n += 1 + side_arrays(stage, tuple(x.shape), {k: v.dtype for k, v in side.items()})
    n += 1  # form
    last = chain.stages[-1]
    if last.name in ("int", "sign"):
        bits = 1 if last.name == "sign" else last.bits
        n += 1 + 1 + 4 * 4 + ceil_div(x.numel() * bits, 8)
    else:
        out_dtype = torch.float16 if last.name == "fp16" else x.dtype
        if any(s.name == "fp16" for s in chain.stages):
            out_dtype = torch.float16
        n += 1 + 1 + 4 * 4 + x.numel() * ITEMSIZE[out_dtype]
    return n


def expected_size(cache: KVCache, spec: str) -> int:
    pipeline = Pipeline.parse(spec)
    payload = encode_payload(cache, pipeline)  # only for the data-dependent side dtypes
    chains = []
    for i in range(cache.num_layers):
        for kind in "kv":
            c = pipeline.chain_for(i, kind)
            if c not in chains:
                chains.append(c)
    header = 4 + 2 + 1 + 2 + sum(1 + sum(stage_bytes(s) for s in c.stages) for c in chains)
    total = 12 + header + 4
    for i, (layer, enc) in enumerate(zip(cache, payload.layers)):
        body = GEOMETRY
        if not layer.has_contiguous_positions:
            body += 4 * layer.positions.numel()
        body += block_bytes(pipeline.chain_for(i, "k"), layer.keys, enc.keys.sides)
        body += block_bytes(pipeline.chain_for(i, "v"), layer.values, enc.values.sides)
        total += 4 + body + 4
    return total


SIZE_SPECS = [
    "identity",
    "fp16",
    "int2",
    "int3:axis=channel,group=5",
    "int4:group=4,sym=true",
    "int8:axis=channel,sym=true",
    "int16",
    "sign",
    "sign:axis=channel,group=3",
    "k=int4:axis=channel v=int2",
    "fp16+int4",
    "int4 L0=fp16 L1.v=identity",
]


@pytest.mark.parametrize("spec", SIZE_SPECS)
@given(cache=kv_caches(min_layers=2, max_layers=3))
@settings(max_examples=10)
def test_byte_count_matches_independent_formula(spec, cache):
    data = kvcodec.encode(cache, spec)
    assert len(data) == expected_size(cache, spec)
    info = kvcodec.inspect(data)
    assert info.total_bytes == len(data)
    assert info.header_bytes + sum(layer.wire_bytes for layer in info.layers) == len(data)


def test_byte_count_worked_example():
    """One layer, 1×1×2×4 float32 cache, int4 per token: every byte accounted for by hand."""
    x = torch.ones(1, 1, 2, 4)
    cache = KVCache([LayerKV.contiguous(x, x.clone())])
    data = kvcodec.encode(cache, "int4")
    # header: batch 4 + layers 2 + cache stages 1 + chains 2 + chain length 1
    #   + stage: "int" (1+3) + version 2 + count 1
    #   + bits (1+4+1+8) + axis (1+4+1+2+5) + group (1+5+1+8) + sym (1+3+1+1)
    header = 4 + 2 + 1 + 2 + 1 + (4 + 2 + 1 + 14 + 13 + 15 + 6)
    # block: chain 2 + side count 1 + scale (1+5+1+1+16+2·2) + zero (1+4+1+1+16+2·2)
    #   + form 1 + bits 1 + ndim 1 + dims 16 + 8 codes × 4 bits = 4
    block = 2 + 1 + (1 + 5 + 1 + 1 + 16 + 4) + (1 + 4 + 1 + 1 + 16 + 4) + 1 + 1 + 1 + 16 + 4
    assert len(data) == 12 + header + 4 + (4 + 23 + 2 * block + 4)


def test_positions_cost_four_bytes_each():
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(1, 2, 5, 8, generator=gen)
    contiguous = KVCache([LayerKV.contiguous(k, k.clone(), 9)])
    shared = KVCache([LayerKV(k, k.clone(), torch.tensor([0, 2, 4, 6, 8]), 9)])
    per_head = KVCache([LayerKV(k, k.clone(), torch.tensor([[0, 1, 2, 3, 4], [1, 3, 5, 7, 8]]), 9)])
    sizes = [len(kvcodec.encode(c, "int4")) for c in (contiguous, shared, per_head)]
    assert sizes[1] - sizes[0] == 4 * 5 and sizes[2] - sizes[0] == 4 * 10
    for c in (shared, per_head):
        assert_same_structure(c, kvcodec.decode(kvcodec.encode(c, "int4")))


def test_int4_per_channel_is_under_30_percent_of_fp16():
    gen = torch.Generator().manual_seed(0)
    layers = [LayerKV.contiguous(*(torch.randn(1, 3, 512, 64, generator=gen).half() for _ in range(2))) for _ in range(30)]
    cache = KVCache(layers)
    fp16 = len(kvcodec.encode(cache, "fp16"))
    int4 = len(kvcodec.encode(cache, "int4:axis=channel"))
    elements = cache.num_elements
    assert fp16 == pytest.approx(2 * elements, rel=0.01)
    assert int4 <= 0.30 * fp16
    assert int4 * 8 / elements == pytest.approx(4.0, abs=0.2)  # 4 bits + per-channel side information


def test_bits_per_element_fall_with_the_width():
    cache = make_cache(seed=1, layers=2, heads=2, seq=64, head_dim=64)
    sizes = {w: len(kvcodec.encode(cache, f"int{w}")) for w in (2, 3, 4, 5, 6, 7, 8, 16)}
    widths = sorted(sizes)
    assert all(sizes[a] < sizes[b] for a, b in zip(widths, widths[1:]))
    n = cache.num_elements
    for w, size in sizes.items():
        # per-token side info: 2 fp16 values per 64 elements = 0.5 bit per element (1 bit when
        # int16's tiny scales fall back to float32), plus the fixed overhead
        side = 1.0 if w == 16 else 0.5
        assert w <= size * 8 / n <= w + side + 0.2, w
    sign = len(kvcodec.encode(cache, "sign"))
    assert sign < sizes[2] and 1 <= sign * 8 / n <= 1.5
    assert sizes[16] < len(kvcodec.encode(cache, "fp16")) * 1.1
    assert len(kvcodec.encode(cache, "fp16")) * 2 == pytest.approx(len(kvcodec.encode(cache, "identity")), rel=0.01)


@given(cache=kv_caches(max_layers=4, min_layers=4), spec=pipeline_specs(num_layers=4))
@settings(max_examples=40)
def test_load_then_dump_is_identity_and_deterministic(cache, spec):
    data = kvcodec.encode(cache, spec)
    assert kvcodec.encode(cache, spec) == data
    payload = wire.load(data)
    assert wire.dump(payload) == data
    assert wire.load(memoryview(data)).header_bytes == payload.header_bytes == wire.load_header(data).size
    assert_same_structure(cache, kvcodec.decode(bytearray(data)))


# ----------------------------------------------------------------------------- fuzzing
FUZZ_SPECS = ["int4", "identity", "fp16", "int3:axis=channel,group=2,sym=true", "sign:axis=channel", "k=int2 v=fp16 L1=int16"]


def fuzz_cache(seed: int = 0) -> KVCache:
    gen = torch.Generator().manual_seed(seed)
    k0, v0 = torch.randn(1, 2, 3, 4, generator=gen), torch.randn(1, 2, 3, 4, generator=gen)
    k1, v1 = torch.randn(1, 2, 2, 4, generator=gen), torch.randn(1, 2, 2, 4, generator=gen)
    return KVCache(
        [
            LayerKV.contiguous(k0, v0),
            LayerKV(k1, v1, torch.tensor([[1, 4], [0, 3]]), 6, layer_type="sliding_attention", sliding_window=3),
        ]
    )


def must_reject(data: bytes, seconds: float = 5.0) -> DecodeError:
    with time_limit(seconds):
        try:
            kvcodec.decode(data)
        except DecodeError as exc:
            assert str(exc) and "\n" not in str(exc)
            return exc
    raise AssertionError("malformed payload decoded without an error")


def same_cache(a: KVCache, b: KVCache) -> bool:
    return all(
        torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values) and torch.equal(x.positions, y.positions)
        for x, y in zip(a, b)
    ) and a.num_layers == b.num_layers


@pytest.mark.parametrize("spec", FUZZ_SPECS)
def test_every_truncation_is_rejected(spec):
    data = kvcodec.encode(fuzz_cache(), spec)
    assert len(data) < 700
    for n in range(len(data)):
        exc = must_reject(data[:n])
        if n < len(data) - 4:
            assert "truncated" in str(exc) or "checksum" in str(exc)


def test_random_truncations_of_a_big_payload():
    data = kvcodec.encode(make_cache(layers=6, heads=2, seq=40, head_dim=32), "k=int4:axis=channel v=int2")
    gen = torch.Generator().manual_seed(0)
    for n in torch.randint(0, len(data), (300,), generator=gen).tolist() + [len(data) - 1, 0, 11, 12]:
        must_reject(data[:n])
    must_reject(data + b"\x00")
    assert "trailing bytes" in str(must_reject(data + b"junk"))


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("overwrite"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 8)),
)


def mutate(data: bytes, op) -> bytes:
    kind, pos, arg = op
    buf = bytearray(data)
    pos %= len(buf) + (1 if kind == "insert" else 0)
    if kind == "flip":
        buf[pos] ^= 1 << arg
    elif kind == "overwrite":
        buf[pos : pos + len(arg)] = arg[: len(buf) - pos]
    elif kind == "insert":
        buf[pos:pos] = arg
    else:
        del buf[pos : pos + arg]
    return bytes(buf)


@given(spec=st.sampled_from(FUZZ_SPECS), ops=st.lists(mutations, min_size=1, max_size=4))
@settings(max_examples=400)
def test_mutations_are_rejected_or_harmless(spec, ops):
    cache = fuzz_cache()
    data = kvcodec.encode(cache, spec)
    original = kvcodec.decode(data)
    bad = data
    for op in ops:
        bad = mutate(bad, op)
    if bad == data:
        assert same_cache(kvcodec.decode(bad), original)
        return
    with time_limit(5):
        try:
            out = kvcodec.decode(bad)
        except DecodeError:
            return
    # CRC-32 catches every change of ≤ 32 consecutive bits; anything that gets through must
    # at least not be a silently different cache
    assert same_cache(out, original), "a corrupted payload decoded to a different cache"


@given(spec=st.sampled_from(FUZZ_SPECS), data=st.data())
@settings(max_examples=400)
def test_corruption_behind_valid_checksums_only_raises_decode_error(spec, data):
    """Structure-aware fuzzing: corrupt the header or a section body, then recompute every
    length and CRC so the parser itself is exercised. Only DecodeError may come out (or a
    valid cache), quickly."""
    payload = kvcodec.encode(fuzz_cache(), spec)
    pre, header, bodies = split_payload(payload)
    parts = [header, *bodies]
    which = data.draw(st.integers(0, len(parts) - 1), label="part")
    part = bytearray(parts[which])
    for op in data.draw(st.lists(mutations, min_size=1, max_size=3), label="ops"):
        part = bytearray(mutate(bytes(part), op)) if part else part
    parts[which] = bytes(part)
    bad = join_payload(pre, parts[0], parts[1:])
    with time_limit(5):
        try:
            out = kvcodec.decode(bad)
        except DecodeError as exc:
            assert str(exc)
            return
    assert isinstance(out, KVCache)
    for layer in out:
        assert layer.keys.dtype in (torch.float32, torch.float16, torch.bfloat16)


@given(junk=st.binary(max_size=200))
@settings(max_examples=300)
def test_random_bytes_are_rejected(junk):
    must_reject(junk)
    must_reject(b"KVCD\x01\x00\x00\x00" + junk)


# ----------------------------------------------------------------------------- hand-crafted payloads
def sample(spec: str = "int4", **kw) -> bytes:
    return kvcodec.encode(fuzz_cache(**kw), spec)


def with_header(data: bytes, header: bytes, minor: int | None = None) -> bytes:
    pre, _, bodies = split_payload(data)
    if minor is not None:
        pre = pre[:5] + bytes([minor]) + pre[6:]
    return join_payload(pre, header, bodies)


def edit_body(data: bytes, layer: int, offset: int, fmt: str, value) -> bytes:
    pre, header, bodies = split_payload(data)
    body = bytearray(bodies[layer])
    struct.pack_into(fmt, body, offset, value)
    bodies[layer] = bytes(body)
    return join_payload(pre, header, bodies)


# body offsets (wire-format §4): index 0, type 2, window 3, seen 7, dtype 11, heads 12, seq 14, dk 18, dv 20, pos 22
OFF_TYPE, OFF_WINDOW, OFF_SEEN, OFF_DTYPE, OFF_HEADS, OFF_SEQ, OFF_DK, OFF_DV, OFF_POS = 2, 3, 7, 11, 12, 14, 18, 20, 22


def test_valid_payload_decodes():
    out = kvcodec.decode(sample())
    assert_same_structure(fuzz_cache(), out)


def test_bad_magic():
    data = sample()
    exc = must_reject(b"KVCX" + data[4:])
    assert "bad magic" in str(exc) and "not a kvcodec payload" in str(exc)
    assert "bad magic" in str(must_reject(b"PK\x03\x04" + data[4:]))


@pytest.mark.parametrize("major", [0, 2, 255])
def test_unsupported_major_version(major):
    data = sample()
    pre, header, bodies = split_payload(data)
    bad = join_payload(pre[:4] + bytes([major]) + pre[5:], header, bodies)
    exc = must_reject(bad)
    assert f"unsupported wire format version {major}.0" in str(exc)


def test_newer_minor_version_may_append_header_fields():
    data = sample()
    _, header, _ = split_payload(data)
    newer = with_header(data, header + b"\x07future", minor=3)
    assert same_cache(kvcodec.decode(newer), kvcodec.decode(data))
    assert kvcodec.inspect(newer).version == "1.3"
    exc = must_reject(with_header(data, header + b"\x07future"))
    assert "unexpected bytes after the chain table" in str(exc)


def test_unknown_codec():
    data = sample("fp16")
    _, header, _ = split_payload(data)
    assert header.count(b"\x04fp16") == 1
    exc = must_reject(with_header(data, header.replace(b"\x04fp16", b"\x04fq16")))
    assert "unknown codec 'fq16'" in str(exc) and "plugin" in str(exc)
    longer = with_header(data, header.replace(b"\x04fp16", b"\x09zstandard"))
    assert "unknown codec 'zstandard'" in str(must_reject(longer))


def test_unknown_codec_in_a_smaller_registry():
    data = sample("k=sign v=int4")
    full = get_registry()
    small = Registry({k: v for k, v in full.codecs.items() if k != "sign"}, full.loaded, full.failed)
    with pytest.raises(DecodeError, match="unknown codec 'sign'"):
        kvcodec.decode(data, registry=small)
    with pytest.raises(DecodeError, match="unknown codec 'sign'"):
        kvcodec.inspect(data, registry=small)


def test_newer_codec_version():
    data = sample("fp16")
    _, header, _ = split_payload(data)
    bad = header.replace(b"\x04fp16\x01\x00", b"\x04fp16\x09\x00")
    assert bad != header
    exc = must_reject(with_header(data, bad))
    assert "version 9 is newer than the installed version 1" in str(exc)


def test_older_codec_version_is_handed_to_the_codec():
    """A codec at version 2 gets the payload's version 1 through from_params and may pick
    a decoder for the older layout."""
    import attrs

    from kvcodec.codec import TensorStage
    from kvcodec.plugins import CodecInfo, Registry

    seen = []

    @attrs.frozen
    class FP16v2(TensorStage):
        name, family, version = "fp16", "cast", 2
        accepts = produces = kvcodec.Form.FLOAT

        @classmethod
        def from_params(cls, params, version):
            seen.append(version)
            return cls(**params)

        def decode(self, y, side):
            return y

    full = get_registry()
    reg = Registry({**full.codecs, "fp16": CodecInfo(FP16v2, "test", "test")}, full.loaded, full.failed)
    cache = kvcodec.decode(sample("fp16"), registry=reg)
    assert seen == [1] and cache.num_layers > 0


def test_invalid_stage_parameters_in_header():
    data = sample("int4")
    _, header, _ = split_payload(data)
    i = header.index(b"\x04bitsi") + 6
    bad = header[:i] + struct.pack("<q", 9) + header[i + 8 :]
    assert "invalid parameters for codec 'int'" in str(must_reject(with_header(data, bad)))
    assert header.count(b"axiss\x05\x00token") == 1
    bad = header.replace(b"token", b"tokin")
    assert "invalid parameters" in str(must_reject(with_header(data, bad)))
    bad = header.replace(b"\x03symb", b"\x03symi")
    assert "header" in str(must_reject(with_header(data, bad)))


def test_checksum_mismatch_in_header_and_sections():
    data = bytearray(sample())
    header_len = struct.unpack_from("<I", data, 8)[0]
    hdr = bytearray(data)
    hdr[12 + header_len // 2] ^= 0x10
    assert str(must_reject(bytes(hdr))) == "checksum mismatch in the header"
    flags = bytearray(data)
    flags[6] ^= 1  # the flags field is covered by the header CRC too
    assert "checksum mismatch in the header" in str(must_reject(bytes(flags)))
    sec = bytearray(data)
    sec[-10] ^= 0x01  # inside the last layer's section
    assert str(must_reject(bytes(sec))) == "checksum mismatch in layer 1 section"
    crc = bytearray(data)
    crc[-1] ^= 0x80  # the CRC itself
    assert "checksum mismatch in layer 1 section" in str(must_reject(bytes(crc)))


def test_inconsistent_geometry_seq_len():
    data = sample("int4")  # layer 0: seq 3 = seen 3; layer 1: seq 2, seen 6, window 3
    # layer 1 carries explicit positions: a shorter seq_len misaligns everything after them
    assert "layer 1 section" in str(must_reject(edit_body(data, 1, OFF_SEQ, "<I", 1)))
    exc = must_reject(edit_body(data, 0, OFF_SEQ, "<I", 2))
    assert "inconsistent geometry: layer 0 keys decode to (1, 2, 3, 4), the section declares (1, 2, 2, 4)" in str(exc)
    exc = must_reject(edit_body(data, 0, OFF_SEQ, "<I", 4))
    assert "seq_len = 4 is outside 1..3" in str(exc)
    exc = must_reject(edit_body(data, 0, OFF_SEQ, "<I", 0))
    assert "seq_len = 0" in str(exc)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "words"),
    [
        (OFF_HEADS, "<H", 1, "inconsistent geometry"),
        (OFF_HEADS, "<H", 0, "kv_heads = 0 is outside"),
        (OFF_HEADS, "<H", 5000, "kv_heads = 5000 is outside"),
        (OFF_DK, "<H", 8, "inconsistent geometry: layer 0 keys"),
        (OFF_DV, "<H", 2, "inconsistent geometry: layer 0 values"),
        (OFF_DK, "<H", 0, "head_dim of keys = 0"),
        (OFF_DTYPE, "<B", 5, "cache dtype code 5 is not float32, float16 or bfloat16"),
        (OFF_TYPE, "<B", 7, "unknown layer type code 7"),
        (OFF_WINDOW, "<I", 2, "a full-attention layer has a sliding window of 2"),
        (OFF_SEEN, "<I", 0, "seen tokens = 0 is outside"),
        (OFF_SEEN, "<I", 1 << 30, "seen tokens = 1073741824 is outside"),
        (OFF_POS, "<B", 9, "unknown positions mode 9"),
        (0, "<H", 1, "holds layer 1, expected 0"),
    ],
)
def test_malformed_geometry_fields(offset, fmt, value, words):
    exc = must_reject(edit_body(sample("int4"), 0, offset, fmt, value))
    assert words in str(exc)


def test_sliding_layer_fields():
    data = sample("int4")
    assert "exceed the sliding window of 1" in str(must_reject(edit_body(data, 1, OFF_WINDOW, "<I", 1)))
    assert "sliding window = 0 is outside" in str(must_reject(edit_body(data, 1, OFF_WINDOW, "<I", 0)))
    exc = must_reject(edit_body(data, 1, OFF_SEEN, "<I", 4))  # positions go up to 4 ≥ seen
    assert "token positions outside 0..3" in str(exc)
    exc = must_reject(edit_body(data, 1, OFF_POS + 1, "<i", -1))
    assert "token positions outside" in str(exc)


def test_dtype_must_agree_across_layers():
    data = sample("int4")
    exc = must_reject(edit_body(data, 1, OFF_DTYPE, "<B", 2))
    assert "inconsistent geometry" in str(exc) and "dtype" in str(exc)


def test_huge_declared_lengths_fail_fast_without_allocating():
    data = sample("int4")
    pre, header, bodies = split_payload(data)
    cases = {}
    # header length near 4 GiB
    cases["header"] = pre[:8] + struct.pack("<I", 0xFFFFFFF0) + data[12:]
    # a section announcing 4 GiB
    i = 12 + len(header) + 4
    cases["section"] = data[:i] + struct.pack("<I", 0xFFFFFFF0) + data[i + 4 :]
    # side array "scale" with dims 2^31 × 2^31 × 2^31 × 2^31 (CRC recomputed)
    body = bytearray(bodies[0])
    j = body.index(b"\x05scale") + 6  # dtype code follows the name
    assert body[j + 1] == 4  # ndim
    struct.pack_into("<IIII", body, j + 2, 1 << 31, 1 << 31, 1 << 31, 1 << 31)
    cases["side dims"] = join_payload(pre, header, [bytes(body), bodies[1]])
    # codes with dims 2^31 × … : find the codes block (form 2, bits 4, ndim 4) of the keys
    body = bytearray(bodies[0])
    k = body.index(b"\x02\x04\x04" + struct.pack("<I", 1))
    struct.pack_into("<IIII", body, k + 3, 1 << 31, 1 << 31, 1 << 31, 1 << 31)
    cases["codes dims"] = join_payload(pre, header, [bytes(body), bodies[1]])
    # an *empty* codes array whose other dims are 2^31: needs no bytes, but no tensor can have that shape
    body = bytearray(bodies[0])
    struct.pack_into("<IIII", body, k + 3, 0, 1 << 31, 1 << 31, 1 << 31)
    cases["empty codes"] = join_payload(pre, header, [bytes(body), bodies[1]])
    body = bytearray(bodies[0])
    struct.pack_into("<IIII", body, j + 2, 1 << 31, 0, 1 << 31, 1 << 31)
    cases["empty side"] = join_payload(pre, header, [bytes(body), bodies[1]])
    # within the element limit but far beyond the buffer: refused by the length check
    body = bytearray(bodies[0])
    struct.pack_into("<IIII", body, j + 2, 1 << 20, 1 << 10, 1, 1)
    cases["side 1 GiB"] = join_payload(pre, header, [bytes(body), bodies[1]])
    body = bytearray(bodies[0])
    struct.pack_into("<IIII", body, k + 3, 1 << 20, 1 << 10, 1, 1)
    cases["codes 1 GiB"] = join_payload(pre, header, [bytes(body), bodies[1]])
    # one dimension beyond the 2^31 limit
    body = bytearray(bodies[0])
    struct.pack_into("<I", body, j + 2, 0xFFFFFFFF)
    cases["dim limit"] = join_payload(pre, header, [bytes(body), bodies[1]])
    # 200 dimensions
    body = bytearray(bodies[0])
    body[j + 1] = 200
    cases["ndim"] = join_payload(pre, header, [bytes(body), bodies[1]])
    # 4096 layers announced (header) for a payload holding two
    hdr = bytearray(header)
    struct.pack_into("<H", hdr, 4, 4096)
    cases["layer count"] = join_payload(pre, bytes(hdr), bodies)
    struct.pack_into("<H", hdr, 4, 60000)
    cases["layer limit"] = join_payload(pre, bytes(hdr), bodies)
    expect = {
        "header": "truncated: header",
        "section": "truncated: layer 0 section announces",
        "side dims": "is too large",
        "codes dims": "is too large",
        "side 1 GiB": "truncated: layer 0 section needs 2147483648 bytes for keys side 'scale'",
        "codes 1 GiB": "truncated: layer 0 section needs 536870912 bytes for keys packed codes",
        "empty codes": "keys codes shape (0, 2147483648, 2147483648, 2147483648) is too large",
        "empty side": "shape (2147483648, 0, 2147483648, 2147483648) is too large",
        "dim limit": "dimension = 4294967295 is outside 0..2147483648",
        "ndim": "ndim = 200 is outside 0..8",
        "layer count": "truncated: layer 2 section is missing (4096 layers announced)",
        "layer limit": "layer count = 60000 is outside 1..4096",
    }
    for name, bad in cases.items():
        t0 = time.perf_counter()
        exc = must_reject(bad, seconds=2)
        assert time.perf_counter() - t0 < 1.0, name
        assert expect[name] in str(exc), (name, str(exc))


def test_huge_group_parameter_from_the_wire_is_harmless():
    """group is an untrusted int64 from the header: a channel run of 2^40 tokens must not
    make the decoder pad (allocate) 2^40 tokens."""
    data = sample("int4:axis=channel")
    _, header, _ = split_payload(data)
    i = header.index(b"\x05groupi") + 7
    bad = with_header(data, header[:i] + struct.pack("<q", 1 << 40) + header[i + 8 :])
    with time_limit(5):
        out = kvcodec.decode(bad)
    assert same_cache(out, kvcodec.decode(data))


def test_short_and_empty_inputs():
    assert "preamble" in str(must_reject(b""))
    assert "preamble" in str(must_reject(b"KVCD\x01"))
    assert "truncated" in str(must_reject(sample()[:30]))


def test_crc_is_plain_zlib_crc32():
    data = sample()
    header_len = struct.unpack_from("<I", data, 8)[0]
    end = 12 + header_len
    assert struct.unpack_from("<I", data, end)[0] == zlib.crc32(data[:end])


# ----------------------------------------------------------------------------- writer limits
def _layer(b=1, h=1, t=2, d=4, dv=None, seen=None, **kw):
    k = torch.zeros(b, h, t, d)
    v = torch.zeros(b, h, t, d if dv is None else dv)
    return LayerKV.contiguous(k, v, seen, **kw)


@pytest.mark.parametrize(
    ("layer", "words"),
    [
        (lambda: _layer(seen=(1 << 24) + 1), "seen tokens = 16777217 is outside 1..16777216"),
        (lambda: _layer(h=1025), "kv_heads = 1025 is outside 1..1024"),
        (lambda: _layer(t=0, seen=5), "seq_len = 0 is outside 1..5"),
        (lambda: _layer(d=65536), "head_dim of keys = 65536 is outside 1..65535"),
        (lambda: _layer(dv=65536), "head_dim of values = 65536"),
        (lambda: _layer(b=65537, d=1), "batch = 65537 is outside 1..65536"),
        (lambda: _layer(t=3, seen=9, layer_type="sliding_attention", sliding_window=2), "seq_len = 3 is outside 1..2"),
    ],
)
def test_writer_refuses_what_a_reader_rejects(layer, words):
    """wire-format §7: a writer MUST NOT produce a payload beyond the reader's limits."""
    with pytest.raises(kvcodec.CodecError, match="cannot be sent in wire format v1") as info:
        kvcodec.encode(KVCache([layer()]), "identity")
    assert words in str(info.value)


def test_writer_accepts_the_limits_themselves():
    for layer in (_layer(seen=1 << 24), _layer(h=1024, d=1), _layer(b=65536, d=1, t=1)):
        cache = KVCache([layer])
        assert_same_structure(cache, kvcodec.decode(kvcodec.encode(cache, "int2")))
    cache = KVCache([_layer(t=1) for _ in range(4096)])
    assert kvcodec.inspect(kvcodec.encode(cache, "identity")).layers[-1].index == 4095
    with pytest.raises(kvcodec.CodecError, match="layer count = 4097"):
        kvcodec.encode(KVCache([_layer(t=1) for _ in range(4097)]), "identity")
