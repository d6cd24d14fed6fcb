"""Entropy coding stages (``plugins/kvcodec_builtins/entropy``, ``specs/entropy-coding.md``):

- ``ans`` and ``zstd`` decode to the identical codes for every width 1–16, every context
  and shape, skewed, uniform and constant codes;
- a stream is never longer than the packed codes plus its 2 + 4·ndim + 1 header bytes
  (the raw fallback, mode 0), and through ``kvcodec.encode`` a chain with an entropy stage
  is never more than 6 bytes per tensor (plus the stage's header descriptor) longer than
  the chain without it — checked against the exact size formula of the spec;
- an independent pure-Python implementation of the spec (tables, varints, constriction's
  quantized CDF, the rANS coder) produces the same bytes as the stage and decodes them;
- the empirical-entropy helper, and ANS staying within a few bits of it;
- truncated, flipped, extended streams and hand-made bad tables raise ``DecodeError``
  (and nothing else); damaged payloads raise ``DecodeError`` through ``kvcodec.decode``.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from conftest import join_payload, kv_caches, make_cache, split_payload
from hypothesis import given, settings
from hypothesis import strategies as st

import kvcodec
from kvcodec import bitpack, wire
from kvcodec.codec import Codes
from kvcodec.errors import CodecError, DecodeError
from kvcodec_builtins.entropy import ANSCoder, Zstd, empirical_entropy, entropy_bits
from kvcodec_builtins.entropy import tables as tb
from kvcodec_builtins.entropy.container import MAX_CODES

PRECISION = 24  # constriction's default Categorical / AnsCoder precision


# ----------------------------------------------------------------------------- strategies
def make_codes(seed: int, shape: tuple[int, ...], bits: int, kind: str) -> Codes:
    """Codes of ``shape``: ``uniform`` over the alphabet, ``skewed`` (a narrow discrete
    Gaussian around a random centre, as quantizers give), ``constant`` or ``two`` values."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    if kind == "uniform":
        v = rng.integers(0, top + 1, size=shape)
    elif kind == "skewed":
        centre = rng.integers(0, top + 1)
        v = np.clip(np.rint(rng.normal(centre, 0.2 + rng.random() * 3, size=shape)), 0, top)
    elif kind == "constant":
        v = np.full(shape, rng.integers(0, top + 1))
    else:
        v = np.where(rng.random(shape) < 0.9, 0, top)
    dtype = np.uint8 if bits <= 8 else np.int32
    return Codes(torch.from_numpy(np.asarray(v, dtype=dtype).reshape(shape)), bits)


@st.composite
def codes_4d(draw, max_dim: int = 6, max_seq: int = 40) -> Codes:
    shape = (
        draw(st.integers(1, 2), label="batch"),
        draw(st.integers(1, 3), label="heads"),
        draw(st.integers(1, max_seq), label="tokens"),
        draw(st.integers(1, max_dim), label="dim"),
    )
    bits = draw(st.integers(1, 16), label="bits")
    kind = draw(st.sampled_from(("uniform", "skewed", "skewed", "constant", "two")), label="kind")
    return make_codes(draw(st.integers(0, 2**31 - 1), label="seed"), shape, bits, kind)


STAGES = st.one_of(
    st.builds(ANSCoder, context=st.sampled_from(tb.CONTEXTS), precision=st.sampled_from((4, 8, 12, 24))),
    st.builds(Zstd, level=st.sampled_from((1, 3, 19))),
)


def header_size(ndim: int) -> int:
    return 2 + 4 * ndim + 1


def assert_same_codes(a: Codes, b: Codes) -> None:
    assert b.bits == a.bits
    assert b.data.dtype == Codes.storage_dtype(a.bits)
    assert tuple(b.data.shape) == tuple(a.data.shape)
    assert torch.equal(b.data.long(), a.data.long())


# ----------------------------------------------------------------------------- round trips and the bound
@settings(max_examples=150)
@given(codes=codes_4d(), stage=STAGES)
def test_stages_are_lossless_and_never_exceed_packed_codes_plus_header(codes, stage):
    stream, side = stage.encode(codes)
    assert side == {}
    assert isinstance(stream, bytes)
    packed = bitpack.packed_size(codes.data.numel(), codes.bits)
    assert len(stream) <= packed + header_size(4)
    assert stream[header_size(4) - 1] in (0, 1)
    if stream[header_size(4) - 1] == 0:  # raw fallback: exactly the packed codes
        assert stream[header_size(4) :] == bitpack.pack(codes.data, codes.bits)
    assert_same_codes(codes, stage.decode(stream, {}))


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("stage", [ANSCoder(), ANSCoder(context="channel"), ANSCoder(context="tensor"), Zstd()])
def test_every_width_round_trips(bits, stage):
    for kind in ("skewed", "uniform", "constant", "two"):
        codes = make_codes(bits, (1, 2, 33, 8), bits, kind)
        assert_same_codes(codes, stage.decode(stage.encode(codes)[0], {}))


@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 1, 4), (1, 2, 3, 4, 2)])
def test_tensor_context_and_zstd_take_any_rank(shape):
    codes = make_codes(1, shape, 5, "skewed")
    for stage in (ANSCoder(context="tensor"), Zstd()):
        stream = stage.encode(codes)[0]
        assert len(stream) <= bitpack.packed_size(codes.data.numel(), 5) + header_size(len(shape))
        assert_same_codes(codes, stage.decode(stream, {}))


def test_head_and_channel_contexts_need_rank_4():
    with pytest.raises(CodecError, match="needs \\[B,H,T,D\\]"):
        ANSCoder().encode(make_codes(0, (4, 4), 4, "skewed"))
    stream = ANSCoder(context="tensor").encode(make_codes(0, (4, 4), 4, "skewed"))[0]
    with pytest.raises(DecodeError, match="rank"):
        ANSCoder(context="head").decode(stream, {})


def test_empty_codes_round_trip():
    codes = Codes(torch.zeros((1, 2, 0, 4), dtype=torch.uint8), 4)
    for stage in (ANSCoder(), ANSCoder(context="channel"), Zstd()):
        stream = stage.encode(codes)[0]
        assert len(stream) == header_size(4)
        assert_same_codes(codes, stage.decode(stream, {}))


def test_uniform_codes_fall_back_to_raw_and_skewed_codes_are_coded():
    uniform = make_codes(3, (1, 2, 64, 16), 4, "uniform")
    skewed = make_codes(3, (1, 2, 64, 16), 4, "two")
    packed = bitpack.packed_size(2 * 64 * 16, 4)
    for stage in (ANSCoder(), Zstd()):
        raw = stage.encode(uniform)[0]
        assert raw[header_size(4) - 1] == 0 and len(raw) == packed + header_size(4)
        coded = stage.encode(skewed)[0]
        assert coded[header_size(4) - 1] == 1 and len(coded) < packed // 2


def test_encoders_reject_codes_out_of_range():
    bad = Codes(torch.tensor([[[[16]]]], dtype=torch.uint8), 4)
    for stage in (ANSCoder(), Zstd()):
        with pytest.raises(CodecError, match="outside 0..15"):
            stage.encode(bad)
        with pytest.raises(CodecError, match="expected integer codes"):
            stage.encode(torch.zeros(1, 1, 1, 1))


def test_constant_tables_cost_no_ans_words():
    codes = make_codes(0, (1, 3, 50, 8), 8, "constant")
    stream = ANSCoder().encode(codes)[0]
    table_len, word_count = struct.unpack_from("<II", stream, header_size(4))
    assert word_count == 0 and len(stream) == header_size(4) + 8 + table_len  # tables only: (lo, 1, f) per head
    assert_same_codes(codes, ANSCoder().decode(stream, {}))


# ----------------------------------------------------------------------------- an independent implementation of the spec
def ref_varints(values) -> bytes:
    out = bytearray()
    for v in values:
        v = int(v)
        while True:
            byte, v = v & 0x7F, v >> 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def ref_read_varints(buf: bytes) -> list[int]:
    values, v, shift = [], 0, 0
    for byte in buf:
        v |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            values.append(v)
            v, shift = 0, 0
    assert shift == 0
    return values


def ref_cdf(freqs: list[int]) -> list[int]:
    """entropy-coding.md §4.1: constriction's quantized CDF of ``Categorical(f, perfect=False)``."""
    m = len(freqs)
    norm = 0.0
    for f in freqs:
        norm += float(f)
    scale = float((1 << PRECISION) - m) / norm
    cdf, cum = [], 0.0
    for i, f in enumerate(freqs):
        cdf.append(math.floor(cum * scale) + i)
        cum += float(f)
    return cdf + [1 << PRECISION]


def ref_streams(codes: np.ndarray, context: str) -> list[list[int]]:
    """§3.1, written with explicit loops."""
    if context == "tensor":
        return [codes.reshape(-1).tolist()]
    b, h, t, d = codes.shape
    if context == "head":
        return [[int(codes[bi, hi, ti, di]) for bi in range(b) for ti in range(t) for di in range(d)] for hi in range(h)]
    return [[int(codes[bi, hi, ti, di]) for bi in range(b) for ti in range(t)] for hi in range(h) for di in range(d)]


def ref_encode(codes: Codes, context: str, precision: int) -> bytes:
    values = codes.data.numpy().astype(np.int64)
    head = struct.pack(f"<BB{values.ndim}I", codes.bits, values.ndim, *values.shape)
    packed = bitpack.pack(codes.data, codes.bits)
    streams = ref_streams(values, context)
    fields, models = [], []
    for s in streams:
        if not s:
            fields += [0, 0]
            models.append(None)
            continue
        lo, hi = min(s), max(s)
        counts = [0] * (hi - lo + 1)
        for v in s:
            counts[v - lo] += 1
        n = len(s)
        if n > 1 << precision:
            counts = [0 if c == 0 else max(1, (c << precision) // n) for c in counts]
        fields += [lo, len(counts)] + counts
        models.append((lo, ref_cdf(counts)) if len(counts) > 1 else None)
    state, bulk = 0, []
    for s, model in zip(reversed(streams), reversed(models)):
        if model is None:
            continue
        lo, cdf = model
        for v in reversed(s):
            c, p = cdf[v - lo], cdf[v - lo + 1] - cdf[v - lo]
            if state >> (64 - PRECISION) >= p:
                bulk.append(state & 0xFFFFFFFF)
                state >>= 32
            state = ((state // p) << PRECISION) | (c + state % p)
    while state:
        bulk.append(state & 0xFFFFFFFF)
        state >>= 32
    table = ref_varints(fields)
    coded = struct.pack("<II", len(table), len(bulk)) + table + struct.pack(f"<{len(bulk)}I", *bulk)
    return head + (b"\x01" + coded if len(coded) < len(packed) else b"\x00" + packed)


def ref_decode(stream: bytes, context: str) -> np.ndarray:
    bits, ndim = stream[0], stream[1]
    shape = struct.unpack_from(f"<{ndim}I", stream, 2)
    pos = 2 + 4 * ndim
    count = math.prod(shape)
    if stream[pos] == 0:
        return bitpack.unpack(stream[pos + 1 :], count, bits).numpy().reshape(shape)
    table_len, word_count = struct.unpack_from("<II", stream, pos + 1)
    fields = ref_read_varints(stream[pos + 9 : pos + 9 + table_len])
    words = list(struct.unpack_from(f"<{word_count}I", stream, pos + 9 + table_len))
    state = 0
    while words and state < 1 << 32:
        state = (state << 32) | words.pop()
    k_count = 1 if context == "tensor" else shape[1] * (shape[3] if context == "channel" else 1)
    n = count // k_count
    streams, i = [], 0
    for _ in range(k_count):
        lo, m = fields[i], fields[i + 1]
        cdf = ref_cdf(fields[i + 2 : i + 2 + m]) if m > 1 else None
        i += 2 + m
        out = []
        for _ in range(n):
            if cdf is None:
                out.append(lo)
                continue
            q = state & ((1 << PRECISION) - 1)
            state >>= PRECISION
            s = max(j for j in range(m) if cdf[j] <= q)
            state = state * (cdf[s + 1] - cdf[s]) + q - cdf[s]
            if state < 1 << 32 and words:
                state = (state << 32) | words.pop()
            out.append(lo + s)
        streams.append(out)
    assert state == 0 and not words
    a = np.array(streams, dtype=np.int64)
    if context == "tensor":
        return a.reshape(shape)
    b, h, t, d = shape
    if context == "head":
        return a.reshape(h, b, t, d).transpose(1, 0, 2, 3)
    return a.reshape(h, d, b, t).transpose(2, 0, 3, 1)


@settings(max_examples=40)
@given(codes=codes_4d(max_dim=4, max_seq=24), context=st.sampled_from(tb.CONTEXTS), precision=st.sampled_from((4, 6, 12)))
def test_the_spec_reproduces_the_stage_byte_for_byte(codes, context, precision):
    stage = ANSCoder(context=context, precision=precision)
    stream = stage.encode(codes)[0]
    assert ref_encode(codes, context, precision) == stream
    assert np.array_equal(ref_decode(stream, context), codes.data.numpy())


def test_worked_example_of_the_spec():
    """entropy-coding.md §7, byte for byte."""
    v = torch.full((64,), 4, dtype=torch.uint8)
    v[[5, 21, 40]], v[[11, 50]] = 3, 5
    codes = Codes(v.reshape(1, 1, 4, 16), 3)
    stream = ANSCoder().encode(codes)[0]
    assert stream.hex(" ") == (
        "03 04 01 00 00 00 01 00 00 00 04 00 00 00 10 00 00 00 01 05 00 00 00 02 00 00 00"
        " 03 03 03 3b 02 9f 13 cf 40 de a2 0f 00"
    )
    assert ref_cdf([3, 59, 2]) == [0, 786432, 16252927, 16777216]
    assert ref_encode(codes, "head", 12) == stream
    assert_same_codes(codes, ANSCoder().decode(stream, {}))


# ----------------------------------------------------------------------------- tables, varints, entropy
def test_quantize_counts():
    c = np.array([3, 0, 5])
    assert tb.quantize_counts(c, 4).tolist() == [3, 0, 5]  # 8 ≤ 16: exact
    c = np.array([1, 0, 998, 1])
    assert tb.quantize_counts(c, 4).tolist() == [1, 0, 15, 1]  # floor(998·16/1000) = 15; 1s stay 1
    assert tb.frequencies_ok(np.array([1, 0, 15, 1]), 1000, 4)
    assert not tb.frequencies_ok(np.array([0, 15, 1]), 1000, 4)  # lo must be used
    assert not tb.frequencies_ok(np.array([3, 0, 4]), 8, 4)  # exact counts must sum to n


@given(st.lists(st.integers(0, 2**35 - 1), max_size=50))
def test_varints_round_trip_and_match_leb128(values):
    enc = tb.varint_encode(np.array(values, dtype=np.uint64))
    assert enc == ref_varints(values)
    assert tb.varint_decode(enc, "t").tolist() == values


@pytest.mark.parametrize(
    "raw, words",
    [(b"\x80", "truncated"), (b"\x80\x80\x80\x80\x80\x01", "longer than 5"), (b"\x85\x00", "not minimal")],
)
def test_bad_varints(raw, words):
    with pytest.raises(DecodeError, match=words):
        tb.varint_decode(raw, "t")


@given(codes=codes_4d(max_dim=5, max_seq=30), context=st.sampled_from(tb.CONTEXTS))
def test_entropy_helper_matches_a_direct_count(codes, context):
    streams = ref_streams(codes.data.numpy().astype(np.int64), context)
    want = 0.0
    for s in streams:
        for c in np.unique(np.array(s), return_counts=True)[1]:
            want += c * math.log2(len(s) / c)
    assert entropy_bits(codes, context) == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert empirical_entropy(codes, context) == pytest.approx(want / codes.data.numel(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("bits", (2, 3, 4, 8))
def test_ans_words_stay_within_a_few_bits_of_the_entropy(bits):
    codes = make_codes(bits, (1, 4, 1000, 16), bits, "skewed")  # 16000 per head ≤ 2^24: exact counts
    stage = ANSCoder(precision=24)
    stream = stage.encode(codes)[0]
    table_len, word_count = struct.unpack_from("<II", stream, header_size(4))
    word_bits = 32 * word_count
    h = entropy_bits(codes, "head")
    assert h - 64 <= word_bits <= h * 1.002 + 64


def test_entropy_helper_rejects_bad_context():
    with pytest.raises(ValueError, match="context"):
        entropy_bits(make_codes(0, (1, 1, 2, 2), 4, "skewed"), "row")
    with pytest.raises(ValueError, match="needs"):
        entropy_bits(make_codes(0, (2, 2), 4, "skewed"), "head")
    assert empirical_entropy(Codes(torch.zeros(0, dtype=torch.uint8), 4), "tensor") == 0.0


# ----------------------------------------------------------------------------- malformed streams
def ans_stream(context: str = "head") -> tuple[bytes, Codes]:
    codes = make_codes(11, (1, 2, 40, 8), 4, "skewed")
    stream = ANSCoder(context=context).encode(codes)[0]
    assert stream[header_size(4) - 1] == 1
    return stream, codes


@settings(max_examples=120)
@given(data=st.data(), stage=STAGES)
def test_damaged_streams_raise_decode_error_or_decode_to_declared_codes(data, stage):
    codes = make_codes(data.draw(st.integers(0, 99)), (1, 2, 30, 8), data.draw(st.sampled_from((3, 4, 9))), "skewed")
    stream = bytearray(stage.encode(codes)[0])
    how = data.draw(st.sampled_from(("truncate", "flip", "append", "set")))
    if how == "truncate":
        del stream[data.draw(st.integers(0, len(stream) - 1)) :]
    elif how == "append":
        stream += data.draw(st.binary(min_size=1, max_size=8))
    else:
        i = data.draw(st.integers(0, len(stream) - 1))
        stream[i] = stream[i] ^ data.draw(st.integers(1, 255)) if how == "flip" else data.draw(st.integers(0, 255))
    try:
        out = stage.decode(bytes(stream), {})
    except DecodeError:
        return
    assert how in ("flip", "set")  # a cut or a longer stream is always caught
    assert isinstance(out, Codes) and 1 <= out.bits <= 16 and out.data.numel() <= MAX_CODES


def test_truncation_anywhere_is_caught():
    for stage in (ANSCoder(), ANSCoder(context="channel"), Zstd()):
        stream = stage.encode(make_codes(5, (1, 2, 30, 8), 4, "two"))[0]
        for cut in range(len(stream)):
            with pytest.raises(DecodeError):
                stage.decode(stream[:cut], {})


def rebuild(stream: bytes, fields: list[int], words: bytes | None = None) -> bytes:
    """``stream`` with its tables replaced by ``fields`` (and optionally its words), with
    consistent table length and word count."""
    pos = header_size(4)
    table_len, word_count = struct.unpack_from("<II", stream, pos)
    table = ref_varints(fields)
    rest = stream[pos + 8 + table_len :] if words is None else words
    return stream[:pos] + struct.pack("<II", len(table), len(rest) // 4) + table + rest


def table_fields(stream: bytes) -> list[int]:
    pos = header_size(4)
    (table_len,) = struct.unpack_from("<I", stream, pos)
    return ref_read_varints(stream[pos + 8 : pos + 8 + table_len])


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda f: [20] + f[1:], "not a valid table"),  # lo beyond 4 bits
        (lambda f: f[:1] + [17] + f[2:], "table"),  # m > alphabet (or tables run out)
        (lambda f: f[:2] + [0] + f[3:], "not a valid table"),  # first frequency 0
        (lambda f: f[:2] + [f[2] + 1] + f[3:], "not a valid table"),  # exact counts no longer sum to n
        (lambda f: f + [0], "after the last table"),
        (lambda f: f[:-1], "end"),
        (lambda f: f[:1] + [0] + f[2 + f[1] :], "not a valid table"),  # m = 0 for a non-empty stream
    ],
)
def test_bad_tables_raise(edit, words):
    stream, _ = ans_stream()
    with pytest.raises(DecodeError, match=words):
        ANSCoder().decode(rebuild(stream, edit(table_fields(stream))), {})


def test_bad_words_and_lengths_raise():
    stream, _ = ans_stream()
    pos = header_size(4)
    table_len, word_count = struct.unpack_from("<II", stream, pos)
    words = stream[pos + 8 + table_len :]
    cases = {
        "do not make": rebuild(stream, table_fields(stream), words + b"\x01"),
        "last ANS word is zero": rebuild(stream, table_fields(stream), words + b"\x00" * 4),
        "do not decode to exactly": rebuild(stream, table_fields(stream), words + b"\x01\x00\x00\x00"),
        "do not make ": stream[:pos] + struct.pack("<I", 10**6) + stream[pos + 4 :],
        " do not make": stream[:pos] + struct.pack("<I", 1) + stream[pos + 4 :],
        "  do not make": stream[: pos + 4] + struct.pack("<I", word_count + 1) + stream[pos + 8 :],
        "truncated": stream[: pos + 7],
        "unknown stream mode": stream[: pos - 1] + b"\x07" + stream[pos:],
        "code width": b"\x11" + stream[1:],
        "rank": stream[:1] + b"\x03" + stream[2:],
        "exceed": stream[:2] + struct.pack("<IIII", 1 << 20, 1 << 20, 1, 1) + stream[18:],
    }
    for words_in_message, bad in cases.items():
        with pytest.raises(DecodeError, match=words_in_message.strip()):
            ANSCoder().decode(bad, {})
    with pytest.raises(DecodeError, match="expected bytes"):
        ANSCoder().decode(Codes(torch.zeros(1, dtype=torch.uint8), 4), {})


def test_bad_zstd_frames_raise():
    codes = make_codes(5, (1, 2, 40, 8), 4, "two")
    stream = Zstd().encode(codes)[0]
    pos = header_size(4)
    assert stream[pos - 1] == 1
    import zstandard

    packed = bitpack.pack(codes.data, 4)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(packed)
    wrong = zstandard.ZstdCompressor().compress(packed + b"\x00")
    cases = {
        "not a zstd frame": stream[:pos] + b"garbage!",
        "does not hold exactly": stream + b"\x00",
        "announces": stream[:pos] + wrong,
        "zstd": stream[:pos] + no_size,
    }
    for words, bad in cases.items():
        with pytest.raises(DecodeError, match=words):
            Zstd().decode(bad, {})


# ----------------------------------------------------------------------------- through kvcodec.encode / decode
API_SPECS = [
    ("int4+ans", "int4"),
    ("int4:axis=channel+cdelta+ans", "int4:axis=channel"),
    ("int4+zstd", "int4"),
    ("int3+ans:context=channel", "int3"),
    ("int8:axis=channel+zstd:level=19", "int8:axis=channel"),
    ("k=int4:axis=channel+ans:context=channel v=int4+ans", "k=int4:axis=channel v=int4"),
    ("sign+ans:context=tensor", "sign"),
    ("int16+ans", "int16"),
    ("fp16+int2+cdelta:mode=seq+zstd", "fp16+int2"),
]


@settings(max_examples=25)
@given(cache=kv_caches(max_layers=3, max_seq=24, head_dims=(4, 8, 16)), specs=st.sampled_from(API_SPECS))
def test_entropy_chains_decode_to_what_the_quantizer_alone_gives(cache, specs):
    spec, base = specs
    payload = kvcodec.encode(cache, spec)
    got, want = kvcodec.decode(payload), kvcodec.decode(kvcodec.encode(cache, base))
    for a, b in zip(got, want):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert kvcodec.inspect(payload).total_bytes == len(payload)


def stage_header_bytes(stage) -> int:
    """wire-format.md §10: S = 1 + len(name) + 2 + 1 + Σ (1 + len(key) + 1 + V)."""
    size = 1 + len(stage.name) + 2 + 1
    for key, value in stage.params().items():
        if isinstance(value, str):
            size += 1 + len(key) + 1 + 2 + len(value.encode())
        else:
            size += 1 + len(key) + 1 + (1 if isinstance(value, bool) else 8)
    return size


@pytest.mark.parametrize("base", ["int4", "int3:axis=channel", "int8:group=4", "int2"])
@pytest.mark.parametrize("coder", ["ans", "ans:context=channel", "zstd"])
def test_payload_size_is_the_codes_size_plus_the_stated_overhead(base, coder):
    """len(q+coder) − len(q) = S_coder + Σ_blocks (1 + 4 + len(stream) − (2 + 4·4 + packed)),
    which is at most S_coder + 6 per block."""
    cache = make_cache(seed=3, layers=3, heads=2, seq=20, head_dim=8)
    plain, coded = kvcodec.encode(cache, base), kvcodec.encode(cache, f"{base}+{coder}")
    stage = kvcodec.Pipeline.parse(f"int4+{coder}").rules[0].chain.stages[1]
    blocks = [(e_plain, e_coded) for lp, lc in zip(wire.load(plain).layers, wire.load(coded).layers)
              for e_plain, e_coded in ((lp.keys, lc.keys), (lp.values, lc.values))]
    delta = stage_header_bytes(stage)
    for e_plain, e_coded in blocks:
        packed = bitpack.packed_size(e_plain.data.data.numel(), e_plain.data.bits)
        delta += 1 + 4 + len(e_coded.data) - (2 + 16 + packed)
        assert len(e_coded.data) <= 2 + 16 + 1 + packed
    assert len(coded) - len(plain) == delta
    assert len(coded) <= len(plain) + stage_header_bytes(stage) + 6 * len(blocks)


@settings(max_examples=30)
@given(data=st.data())
def test_damaged_payloads_raise_decode_error(data):
    cache = make_cache(seed=1, layers=2, heads=2, seq=24, head_dim=8)
    spec = data.draw(st.sampled_from(["int4+ans", "int4:axis=channel+cdelta+ans:context=channel", "int3+zstd"]))
    payload = bytearray(kvcodec.encode(cache, spec))
    if data.draw(st.booleans()):
        del payload[data.draw(st.integers(0, len(payload) - 1)) :]
    else:
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(DecodeError):
        kvcodec.decode(bytes(payload))


@settings(max_examples=30)
@given(data=st.data())
def test_damaged_streams_with_valid_checksums_raise_only_decode_error(data):
    """Damage the entropy stream of a block and recompute every CRC: the stage's own checks
    must reject it (or it decodes to some cache); nothing but DecodeError escapes."""
    cache = make_cache(seed=2, layers=1, heads=2, seq=24, head_dim=8)
    spec = data.draw(st.sampled_from(["int4+ans", "int4+ans:context=channel", "int4+zstd"]))
    pre, header, bodies = split_payload(kvcodec.encode(cache, spec))
    body = bytearray(bodies[0])
    i = data.draw(st.integers(23, len(body) - 1))
    body[i] ^= data.draw(st.integers(1, 255))
    try:
        out = kvcodec.decode(join_payload(pre, header, [bytes(body)]))
    except DecodeError:
        return
    assert out.num_layers == 1
