"""Delta coding along the tokens (``plugins/kvcodec_builtins/delta``, ``specs/transforms.md``):

- ``cdelta`` (CODES → CODES) is lossless for every width 1–16, both modes, any group:
  decode(encode(c)) == c bit for bit, the width and storage dtype are kept, and the zigzag
  map is a bijection of ``[0, 2^bits)``;
- its output is what the spec's formulas give, computed independently in NumPy;
- ``delta`` (FLOAT → FLOAT) reconstructs to float rounding and within its declared
  ``error_bound``; before a quantizer the anchor mode's error is the token's quantization
  error plus its anchor's, the sequential mode's is the running sum of all of them (the
  open-loop accumulation the spec documents);
- chains with them round-trip through ``kvcodec.encode`` / ``decode``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import kv_caches, make_cache
from hypothesis import given, settings
from hypothesis import strategies as st

import kvcodec
from kvcodec import SpecError
from kvcodec.codec import Codes
from kvcodec.errors import CodecError, DecodeError
from kvcodec_builtins.delta import CodeDelta, Delta
from kvcodec_builtins.delta.code_delta import unzigzag, zigzag
from kvcodec_builtins.quant import UniformQuantizer

MODES = st.one_of(
    st.builds(CodeDelta, mode=st.just("anchor"), group=st.sampled_from((1, 2, 3, 16, 1000))),
    st.just(CodeDelta(mode="seq")),
)


@st.composite
def codes(draw, bits=None) -> Codes:
    bits = bits if bits is not None else draw(st.integers(1, 16), label="bits")
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 6)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1), label="seed"))
    top = (1 << bits) - 1
    kind = draw(st.sampled_from(("uniform", "walk", "extremes")))
    if kind == "uniform":
        v = rng.integers(0, top + 1, size=shape)
    elif kind == "walk":  # slowly varying along tokens, wrapping around the alphabet
        v = np.cumsum(rng.integers(-2, 3, size=shape), axis=2) % (top + 1)
    else:
        v = rng.choice([0, top], size=shape)
    return Codes(torch.from_numpy(v.astype(np.uint8 if bits <= 8 else np.int32)), bits)


def ref_cdelta(c: np.ndarray, bits: int, mode: str, group: int) -> np.ndarray:
    """transforms.md §4, with explicit loops over tokens."""
    m = 1 << bits
    out = c.astype(np.int64).copy()
    for t in range(c.shape[2]):
        ref = (t // group) * group if mode == "anchor" else t - 1
        if ref == t or ref < 0:
            continue
        d = (c[:, :, t].astype(np.int64) - c[:, :, ref]) % m
        s = np.where(d >= m // 2, d - m, d)
        out[:, :, t] = np.where(s >= 0, 2 * s, -2 * s - 1)
    return out


# ----------------------------------------------------------------------------- cdelta
@settings(max_examples=200)
@given(c=codes(), stage=MODES)
def test_code_delta_is_lossless(c, stage):
    y, side = stage.encode(c)
    assert side == {} and y.bits == c.bits and y.data.dtype == c.data.dtype and y.data.shape == c.data.shape
    assert int(y.data.min()) >= 0 and int(y.data.max()) < 1 << c.bits
    back = stage.decode(y, {})
    assert back.bits == c.bits and back.data.dtype == Codes.storage_dtype(c.bits)
    assert torch.equal(back.data, c.data)


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("stage", [CodeDelta(), CodeDelta(group=3), CodeDelta(mode="seq")])
def test_code_delta_every_width(bits, stage):
    rng = np.random.default_rng(bits)
    top = (1 << bits) - 1
    parts = [rng.integers(0, top + 1, size=(1, 2, 30, 4)), np.full((1, 2, 5, 4), top), np.zeros((1, 2, 5, 4))]
    v = np.concatenate(parts, axis=2)
    c = Codes(torch.from_numpy(v.astype(np.uint8 if bits <= 8 else np.int32)), bits)
    y = stage.encode(c)[0]
    assert np.array_equal(y.data.numpy(), ref_cdelta(v, bits, stage.mode, stage.group))
    assert torch.equal(stage.decode(y, {}).data, c.data)


@pytest.mark.parametrize("bits", range(1, 17))
def test_zigzag_is_a_bijection(bits):
    d = torch.arange(1 << bits, dtype=torch.int64)
    z = zigzag(d, bits)
    assert sorted(z.tolist()) == list(range(1 << bits))
    assert torch.equal(unzigzag(z, bits), d)
    if bits > 1:  # 0, −1, +1, −2, … ↦ 0, 1, 2, 3, …
        assert z[:2].tolist() == [0, 2] and z[-1].item() == 1


def test_code_delta_example():
    """transforms.md §4.3: 4-bit codes 5, 6, 4, 15, 0 along the tokens."""
    c = Codes(torch.tensor([5, 6, 4, 15, 0], dtype=torch.uint8).view(1, 1, 5, 1), 4)
    seq = CodeDelta(mode="seq").encode(c)[0]
    assert seq.data.view(-1).tolist() == [5, 2, 3, 9, 2]
    anchor = CodeDelta(group=2).encode(c)[0]
    assert anchor.data.view(-1).tolist() == [5, 2, 4, 9, 0]
    for stage, y in ((CodeDelta(mode="seq"), seq), (CodeDelta(group=2), anchor)):
        assert stage.decode(y, {}).data.view(-1).tolist() == [5, 6, 4, 15, 0]


def test_code_delta_rejects_bad_input():
    with pytest.raises(CodecError, match="codes"):
        CodeDelta().encode(torch.zeros(1, 1, 2, 2))
    with pytest.raises(CodecError, match="outside"):
        CodeDelta().encode(Codes(torch.full((1, 1, 2, 2), 9, dtype=torch.uint8), 3))
    with pytest.raises(DecodeError, match="codes"):
        CodeDelta().decode(Codes(torch.zeros(2, 2, dtype=torch.uint8), 4), {})
    with pytest.raises(DecodeError, match="outside"):
        CodeDelta().decode(Codes(torch.full((1, 1, 2, 2), 9, dtype=torch.uint8), 3), {})


# ----------------------------------------------------------------------------- delta (float)
@settings(max_examples=60)
@given(
    cache=kv_caches(max_layers=1, max_seq=40),
    stage=st.sampled_from([Delta(), Delta(group=1), Delta(group=5), Delta(mode="seq")]),
)
def test_float_delta_reconstructs_within_its_bound(cache, stage):
    x = cache.layers[0].keys
    y, side = stage.encode(x)
    assert y.dtype == torch.float32 and y.shape == x.shape and side == {}
    out = stage.decode(y, {})
    bound = stage.error_bound(x, side)
    assert bool(((out.double() - x.double()).abs() <= bound).all())
    a = 0 if stage.mode == "seq" else torch.arange(0, x.shape[2], stage.group)
    assert torch.equal(out[:, :, a], x[:, :, a].float())  # anchors (token 0 for seq) are exact


def test_float_delta_arithmetic():
    """transforms.md §3: differences in float32, sums as specified."""
    x = torch.tensor([1.0, 3.0, 2.5, 2.0, 10.0]).view(1, 1, 5, 1)
    assert Delta(group=2).encode(x)[0].view(-1).tolist() == [1.0, 2.0, 2.5, -0.5, 10.0]
    assert Delta(mode="seq").encode(x)[0].view(-1).tolist() == [1.0, 2.0, -0.5, -0.5, 8.0]
    for stage in (Delta(group=2), Delta(mode="seq")):
        assert torch.equal(stage.decode(stage.encode(x)[0], {}), x)


def quantize_then_decode(stage_delta: Delta, q: UniformQuantizer, x: torch.Tensor):
    y, _ = stage_delta.encode(x)
    codes, side = q.encode(y)
    y_hat = q.decode(codes, side)
    return y, y_hat, stage_delta.decode(y_hat, {})


def test_anchor_error_is_one_step_and_seq_error_accumulates():
    g = torch.Generator().manual_seed(0)
    x = torch.cumsum(torch.randn(1, 2, 64, 16, generator=g) * 0.1, dim=2) + torch.randn(1, 2, 1, 16, generator=g)
    q = UniformQuantizer(bits=4)
    # anchor: error = own difference's quantization error + the anchor's
    stage = Delta(group=16)
    y, y_hat, out = quantize_then_decode(stage, q, x)
    e = (y_hat - y).double()
    a = (torch.arange(64) // 16) * 16
    expect = e + torch.where((torch.arange(64) == a).view(1, 1, -1, 1), torch.zeros_like(e), e[:, :, a])
    assert torch.allclose(out.double() - x.double(), expect, atol=1e-5)
    anchor_err = (out - x).abs()
    # seq: error at token t = the running sum of all quantization errors up to t
    stage = Delta(mode="seq")
    y, y_hat, out = quantize_then_decode(stage, q, x)
    e = (y_hat - y).double()
    assert torch.allclose(out.double() - x.double(), torch.cumsum(e, dim=2), atol=1e-4)
    # beyond token 0's own error, the sequential error is a random walk: its mean square
    # grows with t (about 12× from tokens 1–8 to 48–63); the anchor error does not grow
    walk = (out.double() - x.double() - e[:, :, :1]) ** 2
    assert walk[:, :, 48:].mean() > 4 * walk[:, :, 1:9].mean()
    assert anchor_err[:, :, 48:].mean() < 2 * anchor_err[:, :, 1:16].mean()


def test_float_delta_rejects_bad_input():
    with pytest.raises(CodecError, match="float tensor"):
        Delta().encode(torch.zeros(2, 2))
    with pytest.raises(DecodeError, match="float tensor"):
        Delta().decode(torch.zeros(1, 1, 2, 2, dtype=torch.int32), {})


# ----------------------------------------------------------------------------- parameters and chains
@pytest.mark.parametrize(
    "spec, words",
    [
        ("delta:mode=seq,group=4", "group' applies to mode=anchor only"),
        ("delta:group=0", "'group' must be >= 1"),
        ("int4+cdelta:mode=prev", "'mode' must be anchor or seq"),
        ("delta:mode=anchor,group=x", "expected an integer"),
    ],
)
def test_bad_parameters(spec, words):
    with pytest.raises(SpecError, match=words):
        kvcodec.Pipeline.parse(spec)


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("delta:mode=anchor,group=16+int4", "delta+int4"),
        ("delta:mode=seq+int8", "delta:mode=seq+int8"),
        ("int4:axis=channel+cdelta+ans", "int4:axis=channel+cdelta+ans"),
        ("int2+cdelta:group=4+zstd", "int2+cdelta:group=4+zstd"),
        ("int4+cdelta:mode=seq", "int4+cdelta:mode=seq"),
    ],
)
def test_canonical_specs(spec, canonical):
    p = kvcodec.Pipeline.parse(spec)
    assert p.describe() == canonical
    assert kvcodec.Pipeline.parse(canonical) == p


LOSSLESS_AFTER = [
    ("int4:axis=channel+cdelta+ans", "int4:axis=channel"),
    ("int3+cdelta:mode=seq", "int3"),
    ("sign+cdelta:group=2", "sign"),
    ("int16+cdelta:mode=seq+zstd", "int16"),
    ("k=int4:axis=channel+cdelta+ans v=int4+cdelta:mode=seq+ans", "k=int4:axis=channel v=int4"),
]


@settings(max_examples=20)
@given(cache=kv_caches(max_layers=3, max_seq=30, head_dims=(4, 8, 16)), pair=st.sampled_from(LOSSLESS_AFTER))
def test_code_delta_chains_decode_to_the_quantizer_alone(cache, pair):
    spec, base = pair
    got, want = kvcodec.decode(kvcodec.encode(cache, spec)), kvcodec.decode(kvcodec.encode(cache, base))
    for a, b in zip(got, want):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


@pytest.mark.parametrize("spec", ["delta:mode=anchor,group=16+int4", "delta:mode=seq+int8", "delta", "delta:group=4+fp16"])
def test_float_delta_chains_round_trip(spec):
    cache = make_cache(seed=4, layers=2, heads=2, seq=33, head_dim=16)
    out = kvcodec.decode(kvcodec.encode(cache, spec))
    assert [l.keys.shape for l in out] == [l.keys.shape for l in cache]
    if spec == "delta":
        for a, b in zip(cache, out):
            assert torch.allclose(a.keys, b.keys, rtol=1e-6, atol=1e-6)
