"""The embedded quantizer ``prog`` and the progressive container (``specs/progressive.md``).

- the ``b``-plane prefix of a ``B``-bit ``prog`` code is, bit for bit, the code of the
  ``b``-bit mid-rise quantizer written here from the spec text alone (NumPy, float32,
  its own grouping and float16 side-information rounding), and decodes to the same floats;
  side information identical; hypothesis over shapes, values (bin boundaries, the group
  maximum, constant groups, tiny and huge magnitudes), float16 / bfloat16 inputs, B, b,
  axis and group;
- every prefix of a stream decodes to the ``prog<k>`` wire-format round trip, exactly;
- damaged, foreign, repeated and out-of-order messages raise ``DecodeError`` (fuzzed) and
  leave an incremental decoder unchanged;
- the test vector of §6.6; sizes of §6.5; the stage passes the codec contract suite.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import assert_same_structure, kv_caches, make_cache
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvcodec
from kvcodec import CodecError, DecodeError, KVCache, LayerKV
from kvcodec.plugins import get_registry
from kvcodec.progressive import (
    OVERHEAD,
    ProgressiveDecoder,
    decode_planes,
    encode_planes,
    plane_schedule,
    stream_bits,
    stream_info,
)
from kvcodec.testing import CodecContract

F32 = np.float32


def prog_stage(bits: int, axis: str = "token", group: int = 0):
    return get_registry().get("prog").cls(bits=bits, axis=axis, group=group)


# ----------------------------------------------------------------------------- the reference
# Written from specs/progressive.md §3–§4 and quantization.md §2, §4; shares no code with the stage.
def ref_side(v: np.ndarray, direction: str) -> np.ndarray:
    """quantization.md §4: float16 rounded in ``direction`` if the whole tensor fits, else float32 v."""
    v = v.astype(F32)
    with np.errstate(over="ignore"):
        r = v.astype(np.float16)
    if direction == "up":
        r = np.where(r.astype(F32) < v, np.nextafter(r, np.float16(np.inf)), r)
    elif direction == "down":
        r = np.where(r.astype(F32) > v, np.nextafter(r, np.float16(-np.inf)), r)
    mag = np.abs(r.astype(F32))
    ok = bool(np.isfinite(r).all()) and not bool(((mag > 0) & (mag < 2.0**-14)).any())
    ok = ok and not bool(((v != 0) & (r == 0)).any())
    return r if ok else v


def ref_groups(x: np.ndarray, axis: str, group: int) -> np.ndarray:
    b, h, t, d = x.shape
    if axis == "token":
        g = group or d
        return x.reshape(b, h, t, d // g, g)
    g = min(group, t) if group else t
    c = -(-t // g)
    xt = np.swapaxes(x, -1, -2)
    if c * g > t:
        xt = np.concatenate([xt, np.repeat(xt[..., -1:], c * g - t, axis=-1)], axis=-1)
    return xt.reshape(b, h, d, c, g)


def ref_ungroup(g: np.ndarray, shape: tuple[int, ...], axis: str) -> np.ndarray:
    b, h, t, d = shape
    if axis == "token":
        return g.reshape(b, h, t, d)
    return np.swapaxes(g.reshape(b, h, d, -1)[..., :t], -1, -2)


def ref_midrise(x: np.ndarray, bits: int, axis: str, group: int):
    """The ``bits``-bit mid-rise quantizer (bits ≥ 0): (codes int64, min, range, x̂ float32)."""
    g = ref_groups(x.astype(F32), axis, group)
    zero = ref_side(g.min(-1) + F32(0), "down")  # + 0: a zero minimum is +0 (spec §3)
    z = zero.astype(F32)
    span = ref_side(g.max(-1) - z + F32(0), "up")
    r = span.astype(F32)
    rr = np.where(r == 0, F32(1), r)
    t = (g - z[..., None]) / rr[..., None]
    q = np.clip(np.floor(t * F32(2.0**bits)), 0, 2**bits - 1)
    step = r * F32(2.0**-bits)
    xhat = (q.astype(F32) + F32(0.5)) * step[..., None] + z[..., None]
    return ref_ungroup(q, x.shape, axis).astype(np.int64), zero, span, ref_ungroup(xhat, x.shape, axis)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ----------------------------------------------------------------------------- inputs
@st.composite
def float_tensors(draw) -> torch.Tensor:
    """Small [B,H,T,D] tensors in float32 / float16 / bfloat16 with hard values."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(st.sampled_from((1, 2, 4, 8))))
    n = math.prod(shape)
    dtype = draw(st.sampled_from((torch.float32, torch.float16, torch.bfloat16)))
    kind = draw(st.sampled_from(("floats", "grid", "constant", "normal", "two")))
    limit = 60000.0 if dtype == torch.float16 else 2.0**100
    if kind == "floats":
        vals = draw(st.lists(st.floats(-limit, limit, allow_nan=False, width=32), min_size=n, max_size=n))
        x = torch.tensor(vals, dtype=torch.float32)
    elif kind == "grid":  # values on bin boundaries: min + k · range / 2^j
        k = draw(st.lists(st.integers(0, 64), min_size=n, max_size=n))
        lo = draw(st.sampled_from((0.0, -1.0, 0.1, -3.5, 1000.0)))
        x = lo + torch.tensor(k, dtype=torch.float32) * draw(st.sampled_from((1.0, 0.25, 1 / 64, 3.0)))
    elif kind == "constant":
        x = torch.full((n,), draw(st.sampled_from((0.0, 0.1, -2.0, 1e-6, 3e-8, 65504.0, 7.0))))
    elif kind == "two":
        a, b = draw(st.floats(-100, 100, width=32)), draw(st.floats(-100, 100, width=32))
        x = torch.tensor(draw(st.lists(st.sampled_from((a, b)), min_size=n, max_size=n)), dtype=torch.float32)
    else:
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        x = torch.randn(n, generator=gen) * draw(st.sampled_from((1e-7, 1e-3, 1.0, 50.0, 2e4)))
    x = x.reshape(shape).clamp(-limit, limit).to(dtype)
    return x


def groups_for(axis: str, head_dim: int):
    if axis == "token":
        return st.sampled_from([g for g in (0, 1, 2, 4, 8) if g == 0 or head_dim % g == 0])
    return st.sampled_from((0, 1, 2, 3, 5, 100))


# ----------------------------------------------------------------------------- bit-exactness
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=float_tensors(), bits=st.integers(1, 16), data=st.data())
def test_prefix_is_the_fixed_width_midrise_quantizer_bit_for_bit(x, bits, data):
    axis = data.draw(st.sampled_from(("token", "channel")), label="axis")
    group = data.draw(groups_for(axis, x.shape[-1]), label="group")
    b = data.draw(st.integers(0, bits), label="b")
    stage = prog_stage(bits, axis, group)
    codes, side = stage.encode(x)
    assert codes.bits == bits and codes.data.dtype == (torch.uint8 if bits <= 8 else torch.int32)
    q_ref, zero, span, xhat = ref_midrise(x.float().numpy(), b, axis, group)
    # side information: same dtype, same bits
    assert list(side) == ["min", "range"]
    assert same_bits(side["min"].numpy(), zero) and same_bits(side["range"].numpy(), span)
    # the top b bits of the B-bit code are the b-bit code
    prefix = codes.data.to(torch.int64) >> (bits - b)
    assert np.array_equal(prefix.numpy(), q_ref)
    # and decode to the b-bit quantizer's floats, exactly
    dec = stage.decode_prefix(prefix, b, side)
    assert same_bits(dec.numpy(), xhat)
    # the fixed-width stage prog<b> is the same quantizer
    if b >= 1:
        fixed = prog_stage(b, axis, group)
        q_b, side_b = fixed.encode(x)
        assert np.array_equal(q_b.data.to(torch.int64).numpy(), q_ref)
        assert same_bits(side_b["min"].numpy(), zero) and same_bits(side_b["range"].numpy(), span)
        assert same_bits(fixed.decode(q_b, side_b).numpy(), xhat)
    # half a bin of error, plus float32 rounding (spec §4.3)
    r = torch.from_numpy(ref_ungroup(np.repeat(span.astype(np.float64)[..., None], ref_groups(x.float().numpy(), axis, group).shape[-1], -1), x.shape, axis))
    z = torch.from_numpy(ref_ungroup(np.repeat(zero.astype(np.float64)[..., None], ref_groups(x.float().numpy(), axis, group).shape[-1], -1), x.shape, axis))
    xd = x.double()
    bound = r * 2.0 ** -(b + 1) + 2.0**-21 * (xd.abs() + z.abs() + r) + 2.0**-146  # subnormal rounding
    assert bool(((dec.double() - xd).abs() <= bound).all())


def test_group_maximum_lands_in_the_top_bin_and_constant_groups_decode_exactly():
    x = torch.tensor([[[[-1.0, 0.0, 0.5, 2.0], [3.0, 3.0, 3.0, 3.0], [0.1, 0.1, 0.1, 0.1]]]])
    for bits in (1, 4, 8, 16):
        codes, side = prog_stage(bits).encode(x)
        q = codes.data.to(torch.int64)
        assert int(q[0, 0, 0, 3]) == 2**bits - 1  # x = max: t = 1 → clamped into the top bin
        assert int(q[0, 0, 0, 0]) == 0
        assert q[0, 0, 1].tolist() == [0, 0, 0, 0]  # range 0 → codes 0
        out = prog_stage(bits).decode(codes, side)
        assert out[0, 0, 1].tolist() == [3.0] * 4
        # 0.1 is no float16: min is rounded down, the range 0.1 − min is a float16
        # subnormal, so the range tensor travels as float32 and the group decodes within
        # half a bin of that tiny range (all its codes are the top one)
        assert side["range"].dtype == torch.float32
        r = float(side["range"][0, 0, 2, 0])
        assert 0 < r < 3e-5 and q[0, 0, 2].tolist() == [2**bits - 1] * 4
        assert torch.allclose(out[0, 0, 2], torch.full((4,), 0.1), rtol=0, atol=r / 2 ** (bits + 1) + 1e-8)


def test_midpoint_after_the_header_alone():
    cache = make_cache(3, layers=1, seq=5, head_dim=8)
    stream = encode_planes(cache, "prog4")
    got = decode_planes(stream.messages[:1]).layers[0].keys
    x = cache.layers[0].keys
    mid = (x.amax(-1, keepdim=True) + x.amin(-1, keepdim=True)) / 2
    assert torch.allclose(got, mid.expand_as(x), atol=2e-3 * float(x.abs().max()))


# ----------------------------------------------------------------------------- the container
SPECS = ("prog{b}", "prog{b}:axis=channel", "k=prog{b}:axis=channel,group=3 v=prog{b}:group=2", "prog{b} L0.k=prog{b}:axis=channel")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    cache=kv_caches(max_layers=3, max_batch=2, max_heads=2, max_seq=12, head_dims=(4, 8)),
    bits=st.integers(1, 16),
    template=st.sampled_from(SPECS),
    data=st.data(),
)
def test_every_prefix_decodes_to_the_fixed_width_payload(cache, bits, template, data):
    spec = template.format(b=bits)
    ppm = data.draw(st.sampled_from((1, 1, 2, 3, "random")), label="planes per message")
    if ppm == "random":
        cuts = sorted(data.draw(st.sets(st.integers(1, bits - 1), max_size=bits - 1), label="cuts")) if bits > 1 else []
        ppm = tuple(b - a for a, b in zip([0, *cuts], [*cuts, bits]))
    stream = encode_planes(cache, spec, planes_per_message=ppm)
    assert stream.plane_counts == plane_schedule(bits, ppm)
    assert len(stream.messages) == 1 + len(stream.plane_counts)
    info = stream_info(stream.messages[0])
    assert info.bits == bits and info.header_bytes == len(stream.messages[0])
    assert info.plane_message_bytes == tuple(len(m) for m in stream.messages[1:])
    dec = ProgressiveDecoder()
    for j, message in enumerate(stream.messages):
        planes = dec.feed(message)
        assert planes == stream.reachable[j]
        assert dec.bytes_received == sum(len(m) for m in stream.messages[: j + 1]) == stream.bytes_for(planes)
        got = dec.cache()
        assert_same_structure(cache, got)
        if planes:
            ref = kvcodec.decode(kvcodec.encode(cache, template.format(b=planes)))
            for a, b in zip(got, ref):
                assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert dec.complete
    # the whole stream is the prog<B> payload's cache; its size is the codes plus framing
    n = [layer.keys.numel() for layer in cache] + [layer.values.numel() for layer in cache]
    assert sum(len(m) for m in stream.messages[1:]) == len(stream.plane_counts) * (OVERHEAD + 2) + bits * sum(
        -(-k // 8) for k in n
    )


def test_kivi_split_round_trip_matches_wire_and_token_selection_travels():
    cache = make_cache(1, layers=2, seq=7, head_dim=8, kind="selected", per_head=True)
    stream = encode_planes(cache, "k=prog6:axis=channel v=prog6")
    out = decode_planes(stream.messages)
    ref = kvcodec.decode(kvcodec.encode(cache, "k=prog6:axis=channel v=prog6"))
    assert_same_structure(cache, out)
    for a, b in zip(out, ref):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_spec_test_vector():
    keys = torch.tensor([[-1, 0, 0.5, 2], [0, 0.25, 0.5, 1]]).reshape(1, 1, 2, 4)
    values = torch.tensor([[1, 2, 3, 4], [-4, -2, 0, 2.0]]).reshape(1, 1, 2, 4)
    cache = KVCache([LayerKV.contiguous(keys, values)])
    stream = encode_planes(cache, "prog4")
    assert [len(m) for m in stream.messages] == [226, 26, 26, 26, 26]
    assert stream_info(stream.messages[0]).stream_id == 0x27FC2FE0
    assert hashlib.sha256(b"".join(stream.messages)).hexdigest() == (
        "31d69a58dd090a54518b997dd0dfefe87d333b14e52b472c565912d3b5f2051f"
    )
    assert stream.messages[1].hex(" ") == "4b 56 50 47 01 00 01 00 e0 2f fc 27 01 00 04 00 00 00 01 01 cc cc 19 b1 bd 6a"
    expected = {
        0: ([0.5] * 8, [2.5] * 4 + [-1.0] * 4),
        1: ([-0.25, -0.25, 1.25, 1.25, 0.25, 0.25, 0.75, 0.75], [1.75, 1.75, 3.25, 3.25, -2.5, -2.5, 0.5, 0.5]),
        2: ([-0.625, 0.125, 0.875, 1.625, 0.125, 0.375, 0.625, 0.875], [1.375, 2.125, 2.875, 3.625, -3.25, -1.75, -0.25, 1.25]),
        3: ([-0.8125, -0.0625, 0.6875, 1.8125, 0.0625, 0.3125, 0.5625, 0.9375],
            [1.1875, 1.9375, 3.0625, 3.8125, -3.625, -2.125, 0.125, 1.625]),
        4: ([-0.90625, 0.03125, 0.59375, 1.90625, 0.03125, 0.28125, 0.53125, 0.96875],
            [1.09375, 2.03125, 2.96875, 3.90625, -3.8125, -1.9375, -0.0625, 1.8125]),
    }
    for planes, (k, v) in expected.items():
        layer = decode_planes(stream.messages[: planes + 1]).layers[0]
        assert layer.keys.flatten().tolist() == k and layer.values.flatten().tolist() == v


def test_non_progressive_specs_and_bad_schedules_are_refused():
    cache = make_cache(0, layers=2, seq=4, head_dim=8)
    for spec in ("int8", "k=prog8 v=prog4", "fp16+prog8", "prog8 L1=int4", "prog4+zstd"):
        with pytest.raises(CodecError):
            encode_planes(cache, spec)
    with pytest.raises(CodecError):
        stream_bits("k=prog8 v=prog6")
    assert stream_bits("k=prog5:axis=channel v=prog5") == 5
    for bad in (0, (3, 3), (8, 0), ()):
        with pytest.raises(ValueError):
            encode_planes(cache, "prog8", planes_per_message=bad)
    assert plane_schedule(8, 3) == (3, 3, 2) and plane_schedule(8, 20) == (8,)


# ----------------------------------------------------------------------------- damaged input
def _stream(seed: int = 0, bits: int = 3, spec: str = "k=prog{b}:axis=channel v=prog{b}"):
    return encode_planes(make_cache(seed, layers=2, seq=5, head_dim=4, heads=1), spec.format(b=bits))


STREAM = _stream()
OTHER = _stream(seed=1)


def _recrc(message: bytes, new_body: bytes | None = None, fix_id: bool = False) -> bytes:
    """A message with a valid length and CRC (and, for a header, stream id) around a new body."""
    head = bytearray(message[:18])
    body = message[18:-4] if new_body is None else new_body
    struct.pack_into("<I", head, 14, len(body))
    if fix_id:
        struct.pack_into("<I", head, 8, zlib.crc32(body))
    return bytes(head) + body + struct.pack("<I", zlib.crc32(bytes(head) + body))


@st.composite
def damaged(draw) -> list[bytes]:
    msgs = list(STREAM.messages)
    kind = draw(st.sampled_from(("truncate", "flip", "append", "swap", "drop0", "repeat", "foreign", "extra", "junk", "kind", "version")))
    i = draw(st.integers(0, len(msgs) - 1))
    if kind == "truncate":
        msgs[i] = msgs[i][: draw(st.integers(0, len(msgs[i]) - 1))]
    elif kind == "flip":
        pos = draw(st.integers(0, len(msgs[i]) - 1))
        m = bytearray(msgs[i])
        m[pos] ^= draw(st.integers(1, 255))
        msgs[i] = bytes(m)
    elif kind == "append":
        msgs[i] = msgs[i] + draw(st.binary(min_size=1, max_size=8))
    elif kind == "swap":
        j = draw(st.integers(0, len(msgs) - 1).filter(lambda j: j != i))
        msgs[i], msgs[j] = msgs[j], msgs[i]
    elif kind == "drop0":
        msgs = msgs[1:]
    elif kind == "repeat":
        msgs.insert(i + 1, msgs[i])
    elif kind == "foreign":
        msgs[max(i, 1)] = OTHER.messages[max(i, 1)]
    elif kind == "extra":
        msgs.append(OTHER.messages[1])
    elif kind == "junk":
        msgs[i] = draw(st.binary(max_size=64))
    elif kind == "kind":  # a plane message relabelled as a header, or the other way round
        m = bytearray(msgs[i])
        m[6] = draw(st.sampled_from((0, 1, 2, 255)).filter(lambda k: k != m[6]))
        msgs[i] = _recrc(bytes(m))
    else:
        m = bytearray(msgs[i])
        m[4] = draw(st.sampled_from((0, 2, 255)))
        msgs[i] = _recrc(bytes(m))
    return msgs


@settings(max_examples=150, deadline=None)
@given(msgs=damaged())
def test_damaged_or_misordered_streams_raise_decode_error(msgs):
    with pytest.raises(DecodeError):
        decode_planes(msgs)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_bodies_with_valid_checksums_never_crash_the_reader(data):
    """Mutated bodies re-wrapped with correct lengths, CRCs and stream ids: the reader either
    decodes them or raises DecodeError, never anything else."""
    msgs = list(STREAM.messages)
    i = data.draw(st.integers(0, len(msgs) - 1), label="message")
    body = bytearray(msgs[i][18:-4])
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        op = data.draw(st.sampled_from(("flip", "cut", "insert")), label="op")
        pos = data.draw(st.integers(0, max(len(body) - 1, 0)), label="pos")
        if op == "flip" and body:
            body[pos] ^= data.draw(st.integers(1, 255), label="xor")
        elif op == "cut":
            del body[pos : pos + data.draw(st.integers(1, 16), label="n")]
        else:
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
    msgs[i] = _recrc(msgs[i], bytes(body), fix_id=(i == 0))
    if i == 0:  # plane messages carry the header's stream id
        sid = msgs[0][8:12]
        msgs[1:] = [_recrc(m[:8] + sid + m[12:]) for m in msgs[1:]]
    try:
        cache = decode_planes(msgs)
    except DecodeError:
        return
    assert cache.num_layers >= 1


def test_a_rejected_message_leaves_the_decoder_unchanged():
    dec = ProgressiveDecoder()
    dec.feed(STREAM.messages[0])
    dec.feed(STREAM.messages[1])
    before = dec.cache()
    for bad in (STREAM.messages[1], STREAM.messages[3], STREAM.messages[2][:-1], OTHER.messages[2], STREAM.messages[0]):
        with pytest.raises(DecodeError):
            dec.feed(bad)
    assert dec.planes == 1 and dec.messages == 2
    assert all(torch.equal(a.keys, b.keys) for a, b in zip(before, dec.cache()))
    dec.feed(STREAM.messages[2])
    dec.feed(STREAM.messages[3])
    assert dec.complete
    with pytest.raises(DecodeError, match="one too many"):
        dec.feed(STREAM.messages[3])
    full = kvcodec.decode(kvcodec.encode(make_cache(0, layers=2, seq=5, head_dim=4, heads=1), "k=prog3:axis=channel v=prog3"))
    assert all(torch.equal(a.values, b.values) for a, b in zip(full, dec.cache()))
    with pytest.raises(DecodeError):
        decode_planes([])
    with pytest.raises(DecodeError):
        ProgressiveDecoder().cache()


# ----------------------------------------------------------------------------- the contract
class TestProgContract(CodecContract):
    spec = "k=prog3:axis=channel,group=3 v=prog8"
    codec = "prog"
    invalid_params = ("bits=0", "bits=17", "axis=row", "group=-1")
    max_examples = 8

    @pytest.fixture(params=["k=prog3:axis=channel,group=3 v=prog8", "prog1 L0=prog16:group=4"])
    def kvcodec_spec(self, request) -> str:
        return request.param
