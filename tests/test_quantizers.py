"""Built-in quantizers and casts (``plugins/kvcodec_builtins/quant``), end to end through
``kvcodec.encode`` / ``kvcodec.decode``:

- round trips keep every piece of structure (shape, dtype, device, positions, seen_tokens,
  layer types) for every built-in family;
- INT-b error ≤ half a quantization step per element (step read from the side
  information the codec sent) plus the cast to the cache dtype; identity exact, fp16 equal
  to ``x.half()``, int16 near exact; constant / all-zero / outlier groups;
- statistics over the right dimension: codes cross-checked against
  ``torch.quantize_per_channel`` / ``torch.fake_quantize_per_channel_affine`` and against an
  independent NumPy implementation of the grouping;
- the 1-bit sign quantizer and its mean-absolute scale.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
import torch
from conftest import (
    FP16_MAX,
    INT_WIDTHS,
    assert_same_structure,
    dtype_eps,
    expand_stats,
    kv_caches,
    make_cache,
    subnormal_step,
    time_limit,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import kvcodec
from kvcodec import CodecError, KVCache, LayerKV, wire
from kvcodec.api import encode_payload
from kvcodec.codec import Codes

EPS32 = torch.finfo(torch.float32).eps

FAMILIES = [
    "identity",
    "fp16",
    "int2",
    "int3",
    "int4",
    "int5",
    "int6",
    "int7",
    "int8",
    "int16",
    "sign",
    "int4:axis=channel",
    "int2:axis=channel,group=3",
    "int4:group=4",
    "int8:sym=true",
    "int3:axis=channel,group=16,sym=true",
    "int16:axis=channel,sym=true",
    "sign:axis=channel,group=5",
    "sign:group=2",
    "k=int4:axis=channel v=int2",
    "k=identity v=fp16",
    "v=sign k=int8:axis=channel,group=7",
    "fp16+int4",
    "identity+sign:axis=channel",
    "int4 L0=fp16 L1.k=int8:sym=true L2.v=sign",
    "k=int2:axis=channel v=int2 L0-1=int8 L2.v=identity",
]


def roundtrip(cache: KVCache, spec: str, **kw) -> KVCache:
    return kvcodec.decode(kvcodec.encode(cache, spec), **kw)


# ----------------------------------------------------------------------------- structure
@pytest.mark.parametrize("spec", FAMILIES)
@given(data=st.data())
@settings(max_examples=8)
def test_round_trip_keeps_structure(spec, data):
    min_layers = 3 if " L" in spec else 1
    cache = data.draw(kv_caches(min_layers=min_layers, max_layers=max(min_layers, 3)), label="cache")
    out = roundtrip(cache, spec, device="cpu")
    assert_same_structure(cache, out, "cpu")
    for layer in out:
        assert torch.isfinite(layer.keys.float()).all() and torch.isfinite(layer.values.float()).all()
    # the result is directly usable by transformers
    dyn = out.to_dynamic_cache()
    assert len(dyn.layers) == cache.num_layers


@pytest.mark.parametrize("spec", ["int4 L0=fp16 L1.k=int8:sym=true L2.v=sign", "k=int2:axis=channel v=int4 L1-2.k=identity"])
def test_per_layer_chains_are_the_ones_asked_for(spec):
    cache = make_cache(layers=4, head_dim=8)
    info = kvcodec.inspect(kvcodec.encode(cache, spec))
    got = [(layer.keys, layer.values) for layer in info.layers]
    pipeline = kvcodec.Pipeline.parse(spec)
    want = [(pipeline.chain_for(i, "k").describe(), pipeline.chain_for(i, "v").describe()) for i in range(4)]
    assert got == want
    if spec.startswith("int4"):
        assert got[0] == ("fp16", "fp16")
        assert got[1] == ("int8:sym=true", "int4")
        assert got[2] == ("int4", "sign")
        assert got[3] == ("int4", "int4")
    else:
        assert got == [("int2:axis=channel", "int4"), ("identity", "int4"), ("identity", "int4"), ("int2:axis=channel", "int4")]


def test_decode_onto_explicit_device_and_default():
    cache = make_cache(layers=2)
    data = kvcodec.encode(cache, "int4")
    assert kvcodec.decode(data).device == torch.device("cpu")
    assert kvcodec.decode(data, device=torch.device("cpu")).device == torch.device("cpu")
    if torch.cuda.is_available():  # pragma: no cover - CPU CI
        out = kvcodec.decode(data, device="cuda")
        assert out.device.type == "cuda" and out[0].positions.device.type == "cuda"


# ----------------------------------------------------------------------------- error bounds
@st.composite
def int_params(draw):
    bits = draw(st.sampled_from(INT_WIDTHS))
    axis = draw(st.sampled_from(("token", "channel")))
    group = draw(st.sampled_from((0, 2, 4) if axis == "token" else (0, 1, 3, 5, 16, 100)))
    sym = draw(st.booleans())
    return bits, axis, group, sym


def spec_of(bits, axis, group, sym) -> str:
    return f"int{bits}:axis={axis},group={group},sym={'true' if sym else 'false'}"


def check_int_bound(original: torch.Tensor, decoded: torch.Tensor, side: dict, bits, axis, group, sym) -> None:
    shape = tuple(original.shape)
    x = original.double()
    xh = decoded.double()
    s = expand_stats(side["scale"], shape, axis, group).double()
    z = expand_stats(side["zero"], shape, axis, group).double().abs() if not sym else torch.zeros_like(s)
    tol = s / 2 * (1 + 1e-4) + 2 * EPS32 * (x.abs() + z) + (x.abs() + s) * dtype_eps(original.dtype)
    tol = tol + subnormal_step(original.dtype)  # casting to fp16/bf16 is absolute below their smallest normal
    err = (xh - x).abs()
    bad = err > tol
    assert not bool(bad.any()), (
        f"{int(bad.sum())} elements exceed step/2: worst err {float(err[bad].max())}"
        f" vs tol {float(tol[bad][err[bad].argmax()])}"
    )


@given(params=int_params(), cache=kv_caches(max_layers=3))
@settings(max_examples=120)
def test_int_error_at_most_half_a_step(params, cache):
    bits, axis, group, sym = params
    spec = spec_of(bits, axis, group, sym)
    payload = encode_payload(cache, spec)
    out = kvcodec.decode(wire.dump(payload))
    assert_same_structure(cache, out)
    for layer, got, enc in zip(cache, out, payload.layers):
        for orig, dec, block in ((layer.keys, got.keys, enc.keys), (layer.values, got.values, enc.values)):
            side = block.sides[0]
            assert set(side) == ({"scale"} if sym else {"scale", "zero"})
            b, h, t, d = orig.shape
            count = d // (group or d) if axis == "token" else math.ceil(t / min(group or t, t))
            want = (b, h, t, count) if axis == "token" else (b, h, d, count)
            assert tuple(side["scale"].shape) == want
            assert block.data.bits == bits and tuple(block.data.data.shape) == tuple(orig.shape)
            assert int(block.data.data.max()) <= 2**bits - (2 if sym else 1)
            check_int_bound(orig, dec, side, bits, axis, group, sym)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_int16_near_exact(dtype):
    cache = make_cache(seed=5, layers=2, heads=3, seq=33, head_dim=64, dtype=dtype, scale=2.0, outliers=(3,), sink=8)
    for spec in ("int16", "int16:axis=channel", "int16:sym=true"):
        out = roundtrip(cache, spec)
        for a, b in zip(cache, out):
            x = a.keys.double()
            err = (b.keys.double() - x).abs()
            # per-token range / 65535 / 2, plus the cast to the cache dtype
            rng = x.amax() - x.amin()
            assert float(err.max()) <= float(rng) / 65535 + float(x.abs().max()) * dtype_eps(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_identity_is_bit_exact(dtype):
    cache = make_cache(seed=2, layers=3, dtype=dtype, outliers=(1,), sink=8, kind="selected", per_head=True)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-30, -3.25], dtype=torch.float32)
    k = cache[0].keys.clone()
    k.view(-1)[: special.numel()] = special.to(dtype)
    cache = KVCache([cache[0].replace(keys=k), *cache.layers[1:]])
    out = roundtrip(cache, "identity")
    assert_same_structure(cache, out)
    bits = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[dtype]
    for a, b in zip(cache, out):
        assert torch.equal(a.keys.view(bits), b.keys.view(bits))
        assert torch.equal(a.values.view(bits), b.values.view(bits))


@given(cache=kv_caches(max_layers=2))
@settings(max_examples=40)
def test_fp16_equals_half_cast(cache):
    out = roundtrip(cache, "fp16")
    for a, b in zip(cache, out):
        for x, y in ((a.keys, b.keys), (a.values, b.values)):
            want = x.float().clamp(-FP16_MAX, FP16_MAX).half().to(x.dtype)
            assert torch.equal(y, want)
            if x.dtype == torch.float16:
                assert torch.equal(y, x)


def test_fp16_saturates_and_keeps_nan():
    x = torch.tensor([1e5, -1e6, 65504.0, 65519.0, 65520.0, float("inf"), float("nan"), 1e-9, 0.1]).reshape(1, 1, 1, 9)
    cache = KVCache([LayerKV.contiguous(x, x.clone())])
    y = roundtrip(cache, "fp16")[0].keys.reshape(-1)
    assert y[:6].tolist() == [65504.0, -65504.0, 65504.0, 65504.0, 65504.0, 65504.0]
    assert math.isnan(y[6])
    assert y[7] == torch.tensor(1e-9).half().float()
    assert y[8] == torch.tensor(0.1).half().float()


# ----------------------------------------------------------------------------- special groups
ALL_LOSSY = ["fp16", *(f"int{b}" for b in INT_WIDTHS), "sign"]
AXES_GROUPS = [("token", 0), ("token", 4), ("channel", 0), ("channel", 3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spec", ALL_LOSSY + ["int4:sym=true", "int8:axis=channel,sym=true", "sign:axis=channel,group=3"])
def test_all_zero_decodes_exactly_zero(spec, dtype):
    z = torch.zeros(2, 2, 7, 8, dtype=dtype)
    cache = KVCache([LayerKV.contiguous(z, z.clone()), LayerKV.contiguous(z.clone(), -z)])
    for layer in roundtrip(cache, spec):
        assert torch.equal(layer.keys, z) and torch.equal(layer.values, z)
        assert not bool(torch.signbit(layer.keys).any()) or spec in ("fp16",)


@pytest.mark.parametrize("bits", INT_WIDTHS)
@pytest.mark.parametrize(("axis", "group"), AXES_GROUPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_constant_groups_exact_when_fp16_representable(bits, axis, group, dtype):
    """Asymmetric: zero = the constant itself (fp16-representable), scale 0 → exact. Sign
    (mean |c| = |c|) is exact too. Each group is constant, groups differ."""
    consts = torch.tensor([0.75, -3.5, 1000.0, 2.0**-10, -65504.0, 0.0, 12.125, -1.0])
    d, t = 8, 6
    if axis == "token":
        # per-token groups: constant over the channels of a group
        g = group or d
        base = consts[torch.arange(t * (d // g)) % 8].reshape(t, d // g).repeat_interleave(g, dim=1)
    else:
        # per-channel groups: constant over the tokens of a channel
        base = consts[torch.arange(d)].expand(t, d)
    x = base.reshape(1, 1, t, d).expand(2, 3, t, d).contiguous().to(dtype)
    cache = KVCache([LayerKV.contiguous(x, x.clone())])
    out = roundtrip(cache, f"int{bits}:axis={axis},group={group}")[0]
    assert torch.equal(out.keys, x) and torch.equal(out.values, x)
    out = roundtrip(cache, f"sign:axis={axis},group={group}")[0]
    assert torch.equal(out.keys, x)
    # symmetric: exact only up to the step, but finite and within half a step
    payload = encode_payload(cache, f"int{bits}:axis={axis},group={group},sym=true")
    dec = kvcodec.decode(wire.dump(payload))[0]
    check_int_bound(x, dec.keys, payload.layers[0].keys.sides[0], bits, axis, group, True)


@pytest.mark.parametrize("spec", ["int2", "int4:axis=channel", "int8:sym=true", "int3:group=4", "sign", "int16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_outlier_groups_finite_and_bounded(spec, dtype):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 2, 9, 16, generator=gen)
    x[0, 0, 3, 5] = 30000.0  # one huge outlier in one group
    x[0, 1, :, 2] = -20000.0  # an outlier channel
    x[0, 1, 0, :] = 1e-6  # a tiny token
    x = x.to(dtype)
    cache = KVCache([LayerKV.contiguous(x, x.clone())])
    payload = encode_payload(cache, spec)
    out = kvcodec.decode(wire.dump(payload))[0]
    assert torch.isfinite(out.keys.float()).all()
    if spec.startswith("int"):
        stage = payload.chains[0].stages[0]
        check_int_bound(x, out.keys, payload.layers[0].keys.sides[0], stage.bits, stage.axis, stage.group, stage.sym)


@pytest.mark.parametrize("spec", ["int2", "int3", "int8", "int16", "int2:sym=true", "int4:axis=channel", "sign", "fp16"])
def test_fp16_cache_near_the_fp16_limit_stays_finite(spec):
    """The top code may land above the group maximum (scale rounded up); decoding into an
    fp16 cache must saturate at 65504, not overflow to inf."""
    x = torch.tensor([[0.0, 65504.0, -65504.0, 65504.0], [65504.0, 65504.0, 1.0, -2.0]]).reshape(1, 1, 2, 4).half()
    cache = KVCache([LayerKV.contiguous(x, x.clone())])
    out = roundtrip(cache, spec)[0]
    assert torch.isfinite(out.keys.float()).all(), out.keys
    assert float(out.keys.float().abs().max()) <= FP16_MAX


def test_tiny_and_huge_side_information_falls_back_to_float32():
    tiny = torch.full((1, 1, 2, 4), 1e-7)
    tiny[..., 0] = 0
    cache = KVCache([LayerKV.contiguous(tiny, tiny.clone())])
    side = encode_payload(cache, "int4").layers[0].keys.sides[0]
    assert side["scale"].dtype == torch.float32  # 1e-7/15 is below fp16's smallest normal
    out = roundtrip(cache, "int4")[0].keys
    assert float((out - tiny).abs().max()) <= 1e-7 / 15
    huge = torch.tensor([-1e6, 2e6, 3.0, 4.0]).reshape(1, 1, 1, 4)
    cache = KVCache([LayerKV.contiguous(huge, huge.clone())])
    side = encode_payload(cache, "int8").layers[0].keys.sides[0]
    assert side["zero"].dtype == torch.float32 and side["scale"].dtype == torch.float16
    assert float(side["zero"]) == -1e6
    normal = make_cache(layers=1)
    side = encode_payload(normal, "int4").layers[0].keys.sides[0]
    assert side["scale"].dtype == side["zero"].dtype == torch.float16


def test_scale_rounds_up_and_zero_rounds_down():
    cache = make_cache(seed=9, layers=1, heads=2, seq=16, head_dim=16, scale=3.0)
    for spec in ("int4", "int3:axis=channel", "int5:sym=true"):
        payload = encode_payload(cache, spec)
        stage = payload.chains[0].stages[0]
        side = payload.layers[0].keys.sides[0]
        x = cache[0].keys.double()
        b, h, t, d = x.shape
        if stage.axis == "token":
            groups = x.reshape(b, h, t, 1, d)
        else:
            groups = x.transpose(-1, -2).reshape(b, h, d, 1, t)
        if stage.sym:
            assert (side["scale"].double() * (2 ** (stage.bits - 1) - 1) >= groups.abs().amax(-1)).all()
        else:
            assert (side["zero"].double() <= groups.amin(-1)).all()
            assert (side["zero"].double() * 1 + side["scale"].double() * (2**stage.bits - 1) >= groups.amax(-1)).all()


# ----------------------------------------------------------------------------- axis semantics
def test_statistics_over_the_right_dimension():
    """x[t, d] = (t+1)·(d+1): per-token ranges grow with t, per-channel ranges with d."""
    t, d = 5, 8
    x = (torch.arange(1, t + 1).double()[:, None] * torch.arange(1, d + 1).double()[None, :]).float()
    x = x.reshape(1, 1, t, d)
    cache = KVCache([LayerKV.contiguous(x, x.clone())])
    tok = encode_payload(cache, "int8").layers[0].keys.sides[0]
    ch = encode_payload(cache, "int8:axis=channel").layers[0].keys.sides[0]
    assert tok["zero"].shape == (1, 1, t, 1) and ch["zero"].shape == (1, 1, d, 1)
    assert tok["zero"].flatten().tolist() == [float(i) for i in range(1, t + 1)]  # min over head_dim = t+1
    assert ch["zero"].flatten().tolist() == [float(j) for j in range(1, d + 1)]  # min over tokens = d+1
    for i in range(t):
        want = torch.tensor((i + 1) * (d - 1) / 255, dtype=torch.float32)
        assert float(tok["scale"].flatten()[i]) >= float(want)
        assert float(tok["scale"].flatten()[i]) <= float(want) * (1 + 2**-10)
    for j in range(d):
        want = (j + 1) * (t - 1) / 255
        assert want <= float(ch["scale"].flatten()[j]) <= want * (1 + 2**-10)


@pytest.mark.parametrize("group", [1, 2, 3, 4, 6, 7, 8, 13])
def test_channel_groups_are_runs_of_tokens_last_one_shorter(group):
    t = 13
    x = torch.arange(t, dtype=torch.float32).reshape(1, 1, t, 1).expand(1, 1, t, 4).contiguous()
    cache = KVCache([LayerKV.contiguous(x, x.clone())])
    side = encode_payload(cache, f"int8:axis=channel,group={group}").layers[0].keys.sides[0]
    count = math.ceil(t / group)
    assert side["zero"].shape == (1, 1, 4, count)
    assert side["zero"][0, 0, 0].tolist() == [float(i * group) for i in range(count)]
    maxima = [min((i + 1) * group, t) - 1 for i in range(count)]
    lo = torch.tensor(maxima, dtype=torch.float64) - torch.tensor([i * group for i in range(count)], dtype=torch.float64)
    assert (side["scale"][0, 0, 0].double() * 255 >= lo).all()


def test_token_group_must_divide_head_dim():
    cache = make_cache(layers=1, head_dim=64)
    with pytest.raises(CodecError, match="group size 3 does not divide head_dim 64"):
        kvcodec.encode(cache, "fp16+int4:group=3")
    with pytest.raises(CodecError, match="does not divide head_dim"):
        kvcodec.encode(cache, "sign:group=5")
    cache = make_cache(layers=1, head_dim=4)
    with pytest.raises(CodecError, match="group size 8"):
        kvcodec.encode(cache, "int4:group=8")
    kvcodec.encode(make_cache(layers=1, head_dim=4), "int4:axis=channel,group=8")  # channel: any run length


def test_huge_channel_group_is_one_group_and_cheap():
    """A run longer than the sequence is one run of all tokens; it must not allocate in
    proportion to the group parameter (which also arrives from untrusted payloads)."""
    cache = make_cache(layers=2, heads=2, seq=9, head_dim=16)
    with time_limit(10):
        t0 = time.perf_counter()
        big = kvcodec.encode(cache, "int4:axis=channel,group=1000000000000")
        out_big = kvcodec.decode(big)
        assert time.perf_counter() - t0 < 5
    out = roundtrip(cache, "int4:axis=channel")
    for a, b in zip(out, out_big):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


# ----------------------------------------------------------------------------- torch reference
def _rows(x: torch.Tensor, axis: str) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.reshape(b * h * t, d) if axis == "token" else x.transpose(-1, -2).reshape(b * h * d, t)


@pytest.mark.parametrize("axis", ["token", "channel"])
@pytest.mark.parametrize("sym", [False, True])
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.01, 1.0, 30.0]))
@settings(max_examples=25)
def test_int8_matches_torch_per_channel_quantization(axis, sym, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 24, 16, generator=gen) * scale
    x[:, :, :, 5] *= 50
    cache = KVCache([LayerKV.contiguous(x, x.clone())])
    spec = f"int8:axis={axis},sym={'true' if sym else 'false'}"
    payload = encode_payload(cache, spec)
    block = payload.layers[0].keys
    side = block.sides[0]
    codes = _rows(block.data.data, axis).long()
    s = side["scale"].float().reshape(-1)
    rows = _rows(x, axis)
    if sym:
        zp, inp = 127, rows
    else:
        zp, inp = 0, rows - side["zero"].float().reshape(-1, 1)
    assert bool((s > 0).all())
    qmax = 254 if sym else 255
    zps = torch.full_like(s, zp, dtype=torch.int32)
    fake = torch.fake_quantize_per_channel_affine(inp, s, zps, 0, 0, qmax)
    ref = torch.round(fake.double() / s.double()[:, None]).long() + zp  # fake = (q − zp)·s
    refs = [ref]
    if hasattr(torch, "quantize_per_channel"):  # deprecated in recent torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            refs.append(torch.quantize_per_channel(inp, s.double(), zps.long(), 0, torch.quint8).int_repr().long())
    ratio_all = inp.double() / s.double()[:, None]
    for r in refs:
        diff = (r - codes).abs()
        assert int(diff.max()) <= 1
        if bool(diff.any()):
            # torch multiplies by 1/scale (in float or double), the codec divides in float32:
            # they may differ only on a near-tie, and rarely
            ratio = ratio_all[diff > 0]
            assert bool(((ratio - ratio.floor() - 0.5).abs() < 1e-4).all())
            assert float((diff > 0).double().mean()) < 1e-2
    diff = (ref - codes).abs()
    # the dequantized values: torch's fake quantization is the codec's decode where codes agree
    dec = _rows(kvcodec.decode(wire.dump(payload))[0].keys, axis)
    if not sym:
        fake = fake + side["zero"].float().reshape(-1, 1)
    same = diff == 0
    assert torch.equal(dec[same], fake[same])


# ----------------------------------------------------------------------------- numpy reference
def f16_side(v: np.ndarray, direction: str) -> np.ndarray:
    """specs/quantization.md: round float32 stats to float16 (up / down / nearest); keep
    float32 when any result would be non-finite, subnormal or flushed to zero."""
    with np.errstate(over="ignore"):
        v16 = v.astype(np.float16)
    if direction == "up":
        v16 = np.where(v16.astype(np.float32) < v, np.nextafter(v16, np.float16(np.inf)), v16)
    elif direction == "down":
        v16 = np.where(v16.astype(np.float32) > v, np.nextafter(v16, np.float16(-np.inf)), v16)
    mag = np.abs(v16.astype(np.float32))
    ok = np.isfinite(v16).all() and not ((mag > 0) & (mag < 2.0**-14)).any() and not ((v != 0) & (v16 == 0)).any()
    return v16 if ok else v.astype(np.float32)


def numpy_groups(x: np.ndarray, axis: str, group: int) -> list[tuple[tuple, np.ndarray]]:
    """[(stats index, elements index)] for every group, by explicit slicing."""
    b, h, t, d = x.shape
    out = []
    if axis == "token":
        g = group or d
        for gi in range(d // g):
            out.append(((slice(None), slice(None), slice(None), gi), (Ellipsis, slice(gi * g, (gi + 1) * g))))
    else:
        g = group or t
        for gi in range(math.ceil(t / g)):
            out.append(((slice(None), slice(None), slice(None), gi), (slice(None), slice(None), slice(gi * g, (gi + 1) * g))))
    return out


def numpy_uniform(x: np.ndarray, bits: int, axis: str, group: int, sym: bool):
    """Reference INT-b quantizer on a float32 [B,H,T,D] array: (codes, scale, zero, x̂)."""
    b, h, t, d = x.shape
    groups = numpy_groups(x, axis, group)
    stats_shape = (b, h, t, len(groups)) if axis == "token" else (b, h, d, len(groups))
    lo, hi, am = (np.zeros(stats_shape, np.float32) for _ in range(3))
    for si, ei in groups:
        part = x[ei]
        red = -1 if axis == "token" else 2
        lo[si], hi[si], am[si] = part.min(red), part.max(red), np.abs(part).max(red)
    codes = np.zeros(x.shape, np.int64)
    xh = np.zeros(x.shape, np.float32)
    if sym:
        half = 2 ** (bits - 1) - 1
        scale = f16_side((am / np.float32(half)).astype(np.float32), "up")
        zero = None
    else:
        zero = f16_side(lo, "down")
        scale = f16_side((hi - zero.astype(np.float32)) / np.float32(2**bits - 1), "up")
    for si, ei in groups:
        s = scale[si].astype(np.float32)
        s = s[..., None] if axis == "token" else s[:, :, None, :]
        safe = np.where(s == 0, np.float32(1), s)
        if sym:
            q = np.clip(np.round(x[ei] / safe), -half, half) + half
            xh[ei] = (q - half).astype(np.float32) * s
        else:
            z = zero[si].astype(np.float32)
            z = z[..., None] if axis == "token" else z[:, :, None, :]
            q = np.clip(np.round((x[ei] - z) / safe), 0, 2**bits - 1)
            xh[ei] = q.astype(np.float32) * s + z
        codes[ei] = q
    return codes, scale, zero, xh


@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 11), st.sampled_from([4, 8, 12])),
    bits=st.sampled_from(INT_WIDTHS),
    axis=st.sampled_from(["token", "channel"]),
    group=st.sampled_from([0, 1, 2, 4, 5]),
    sym=st.booleans(),
    scale=st.sampled_from([1e-6, 1e-3, 1.0, 100.0, 5000.0]),
)
@settings(max_examples=250)
def test_uniform_matches_numpy_reference(seed, shape, bits, axis, group, sym, scale):
    if axis == "token":
        assume(group == 0 or shape[3] % group == 0)
    x = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    cache = KVCache([LayerKV.contiguous(torch.from_numpy(x), torch.from_numpy(x.copy()))])
    payload = encode_payload(cache, spec_of(bits, axis, group, sym))
    block = payload.layers[0].keys
    codes, ref_scale, ref_zero, ref_xh = numpy_uniform(x, bits, axis, group, sym)
    assert isinstance(block.data, Codes)
    assert block.data.data.dtype == (torch.uint8 if bits <= 8 else torch.int32)
    np.testing.assert_array_equal(block.data.data.numpy().astype(np.int64), codes)
    assert block.sides[0]["scale"].numpy().dtype == ref_scale.dtype
    np.testing.assert_array_equal(block.sides[0]["scale"].numpy(), ref_scale)
    if not sym:
        assert block.sides[0]["zero"].numpy().dtype == ref_zero.dtype
        np.testing.assert_array_equal(block.sides[0]["zero"].numpy(), ref_zero)
    out = kvcodec.decode(wire.dump(payload))[0].keys
    np.testing.assert_array_equal(out.numpy(), ref_xh)


# ----------------------------------------------------------------------------- sign
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 12), st.sampled_from([4, 8])),
    axis=st.sampled_from(["token", "channel"]),
    group=st.sampled_from([0, 1, 2, 3, 4, 5]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
)
@settings(max_examples=150)
def test_sign_matches_reference(seed, shape, axis, group, dtype):
    if axis == "token":
        assume(group == 0 or shape[3] % group == 0)
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 3).to(dtype)
    cache = KVCache([LayerKV.contiguous(x, x.clone())])
    payload = encode_payload(cache, f"sign:axis={axis},group={group}")
    block = payload.layers[0].keys
    assert block.data.bits == 1
    assert torch.equal(block.data.data, (x >= 0).to(torch.uint8))
    scale = block.sides[0]["scale"]
    xn = x.double().numpy()
    for si, ei in numpy_groups(xn, axis, group):
        red = -1 if axis == "token" else 2
        mean = np.abs(xn[ei]).mean(red)
        got = scale.double().numpy()[si]
        tol = np.abs(mean) * (2.0**-11 if scale.dtype == torch.float16 else 1e-6) + 1e-12
        assert (np.abs(got - mean) <= tol * 1.0001).all(), (got, mean)
    out = kvcodec.decode(wire.dump(payload))[0].keys
    s = expand_stats(scale, tuple(x.shape), axis, group)
    want = torch.where(x >= 0, s, -s).to(dtype)
    assert torch.equal(out, want)


def test_sign_mean_ignores_padding_of_a_short_last_run():
    """Regression: the last channel run of T=5, G=3 holds 2 tokens; padding must not count."""
    x = torch.tensor([1.0, 1.0, 1.0, 1.0, 10.0]).reshape(1, 1, 5, 1).expand(1, 1, 5, 4).contiguous()
    cache = KVCache([LayerKV.contiguous(x, x.clone())])
    side = encode_payload(cache, "sign:axis=channel,group=3").layers[0].keys.sides[0]
    assert side["scale"][0, 0, 0].tolist() == [1.0, 5.5]
    out = roundtrip(cache, "sign:axis=channel,group=3")[0].keys
    assert out[0, 0, :, 0].tolist() == [1.0, 1.0, 1.0, 5.5, 5.5]


def test_sign_of_negative_zero_and_zero():
    x = torch.tensor([-0.0, 0.0, -2.0, 2.0]).reshape(1, 1, 1, 4)
    cache = KVCache([LayerKV.contiguous(x, x.clone())])
    out = roundtrip(cache, "sign")[0].keys.reshape(-1).tolist()
    assert out == [1.0, 1.0, -1.0, 1.0]  # code = x ≥ 0, x̂ = ±mean|x| = ±1


@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), float("nan")])
@pytest.mark.parametrize("spec", ["int4", "int8:sym=true", "int2:axis=channel", "sign", "fp16+int4", "int16:axis=channel,group=2"])
def test_non_finite_input_is_refused_at_encode(spec, bad):
    """A quantizer must not write a payload its decoder rejects (non-finite scale/zero)."""
    x = torch.randn(1, 2, 3, 4)
    x[0, 1, 2, 3] = bad
    cache = KVCache([LayerKV.contiguous(x, torch.zeros(1, 2, 3, 4))])
    if spec.startswith("fp16+") and math.isinf(bad):
        roundtrip(cache, spec)  # fp16 saturates ±inf to ±65504 first: nothing non-finite reaches int4
        return
    with pytest.raises(CodecError, match="not finite"):
        kvcodec.encode(cache, spec)
    out = roundtrip(cache, "identity")[0].keys  # identity sends them as they are
    assert torch.equal(out.isnan(), x.isnan()) and torch.equal(out[~x.isnan()], x[~x.isnan()])


def test_range_beyond_float32_is_refused_at_encode():
    x = torch.tensor([-3e38, 3e38, 0.0, 1.0]).reshape(1, 1, 1, 4)
    cache = KVCache([LayerKV.contiguous(x, x.clone())])
    with pytest.raises(CodecError, match="not finite"):
        kvcodec.encode(cache, "int8")
    out = roundtrip(cache, "int8:sym=true")[0].keys  # absmax/127 is fine
    assert torch.isfinite(out).all()
