"""Tests of the e4m3 codec: kvcodec's contract suite, plus what is specific to FP8."""

from __future__ import annotations

import pytest
import torch

import kvcodec
from kvcodec.api import encode_payload
from kvcodec.testing import CodecContract, make_cache

from kvcodec_fp8 import E4M3


class TestE4M3PerToken(CodecContract):
    spec = "e4m3"
    invalid_params = ("axis=row", "axis=")


class TestE4M3KIVISplit(CodecContract):
    spec = "k=e4m3:axis=channel v=e4m3"
    invalid_params = ("axis=Channel",)


def test_one_byte_per_element_plus_a_scale_per_group():
    cache = make_cache(seed=3, layers=2, heads=4, seq=32, head_dim=64, dtype=torch.bfloat16)
    token = len(kvcodec.encode(cache, "e4m3"))
    channel = len(kvcodec.encode(cache, "e4m3:axis=channel"))
    elements = cache.num_elements
    groups_token = 2 * 2 * 4 * 32  # layers × (keys, values) × heads × tokens
    groups_channel = 2 * 2 * 4 * 64
    header = len("token") - len("channel")  # the axis parameter travels as a string
    assert token - channel == 4 * (groups_token - groups_channel) + header
    overhead = token - elements - 4 * groups_token
    assert 0 < overhead < 400  # header, section framing, array shapes
    # bfloat16 is 2 bytes per element; e4m3 1 byte plus 4 per 64-element token: 0.53×
    assert token / cache.nbytes == pytest.approx((1 + 4 / 64) / 2, abs=0.01)


def test_codes_are_e4m3_bit_patterns_and_scales_map_absmax_to_448():
    x = torch.tensor([[[[1.0, -2.0, 0.5, 448.0 / 100], [0.0, 0.0, 0.0, 0.0]]]])
    codes, side = E4M3().encode(x)
    assert codes.bits == 8 and codes.data.dtype == torch.uint8
    scale = side["scale"]
    assert scale.shape == (1, 1, 2, 1) and scale.dtype == torch.float32
    assert scale[0, 0, 0, 0].item() == pytest.approx(4.48 / 448, rel=1e-6)
    assert scale[0, 0, 1, 0].item() == 0.0  # an all-zero token decodes exactly
    decoded = E4M3().decode(codes, side)
    assert torch.equal(decoded[0, 0, 1], torch.zeros(4))
    assert decoded[0, 0, 0, 3].item() == pytest.approx(4.48, rel=2**-4)
    assert int(codes.data[0, 0, 0, 3]) == 0x7E  # 448: largest finite E4M3 (0 1111 110)


def test_relative_error_is_within_half_an_ulp_of_e4m3():
    cache = make_cache(seed=5, layers=1, heads=2, seq=64, head_dim=32, scale=3.0, outliers=(4,), sink=8.0)
    out = kvcodec.decode(kvcodec.encode(cache, "e4m3"))
    x, y = cache[0].keys, out[0].keys
    scale = encode_payload(cache, "e4m3").layers[0].keys.sides[0]["scale"]
    err = (y - x).abs()
    assert bool((err <= 2**-4 * x.abs() + 2**-10 * scale + 1e-6 * x.abs()).all())
    assert float(err.max()) > 0  # lossy


def test_nan_codes_and_bad_scales_are_rejected():
    codes, side = E4M3().encode(torch.randn(1, 1, 3, 4))
    bad = codes.data.clone()
    bad[0, 0, 0, 0] = 0xFF
    with pytest.raises(kvcodec.DecodeError, match="NaN codes"):
        E4M3().decode(kvcodec.Codes(bad, 8), side)
    with pytest.raises(kvcodec.DecodeError, match="negative or non-finite"):
        E4M3().decode(codes, {"scale": -side["scale"]})
    with pytest.raises(kvcodec.DecodeError, match="shape"):
        E4M3(axis="channel").decode(codes, side)


def test_non_finite_input_is_a_codec_error():
    with pytest.raises(kvcodec.CodecError, match="NaN or inf"):
        E4M3().encode(torch.tensor([[[[1.0, float("inf")]]]]))
