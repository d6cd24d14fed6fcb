"""Per-head PCA (``plugins/kvcodec_builtins/lowrank``, ``specs/transforms.md`` §5):

- side information: ``mean`` ``[H,D]`` and ``basis`` ``[H,r,D]`` in the chosen dtype,
  coefficients ``[B,H,T,r]`` float32; the decoder restores ``[B,H,T,D]``;
- at full rank the tensor comes back to float tolerance (float32 and float16 bases);
- at rank r the squared error of a head is its discarded energy — the eigenvalues of the
  centred scatter matrix beyond r, computed independently with NumPy's SVD;
- ``energy=F`` picks the smallest rank that keeps F of the variance of every head;
- the reconstruction stays within the declared ``error_bound``;
- chains such as ``pca:rank=16+int8`` round-trip through the wire format (the FLOAT data
  and CODES in between have shape ``[B,H,T,r]``); damaged side information raises
  ``DecodeError``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import kv_caches, make_cache
from hypothesis import given, settings
from hypothesis import strategies as st

import kvcodec
from kvcodec import SpecError, wire
from kvcodec.errors import CodecError, DecodeError
from kvcodec_builtins.lowrank import PCA


def low_rank_tensor(seed: int, b=1, h=2, t=48, d=16, rank=4, noise=1e-3) -> torch.Tensor:
    """``[B,H,T,D]`` float32: a rank-``rank`` signal per head, an offset, and a little noise."""
    g = torch.Generator().manual_seed(seed)
    coef = torch.randn(b, h, t, rank, generator=g) * torch.linspace(4, 1, rank)
    basis = torch.linalg.qr(torch.randn(h, d, d, generator=g))[0][:, :rank, :]
    return coef @ basis + torch.randn(1, h, 1, d, generator=g) * 3 + noise * torch.randn(b, h, t, d, generator=g)


def discarded_energy(x: torch.Tensor, mean: torch.Tensor, r: int) -> np.ndarray:
    """Per head: Σ of the squared singular values beyond r of x centred on ``mean``."""
    b, h, t, d = x.shape
    out = []
    for head in range(h):
        xc = x[:, head].reshape(b * t, d).double().numpy() - mean[head].double().numpy()
        sv = np.linalg.svd(xc, compute_uv=False)
        out.append(float((sv[r:] ** 2).sum()))
    return np.array(out)


def per_head_sq_error(x: torch.Tensor, out: torch.Tensor) -> np.ndarray:
    return ((out.double() - x.double()) ** 2).sum(dim=(0, 2, 3)).numpy()


# ----------------------------------------------------------------------------- the stage
def test_side_information_layout():
    x = low_rank_tensor(0, b=2, h=3, t=20, d=8)
    for dtype, torch_dtype in (("float16", torch.float16), ("float32", torch.float32)):
        y, side = PCA(rank=5, dtype=dtype).encode(x)
        assert y.shape == (2, 3, 20, 5) and y.dtype == torch.float32
        assert list(side) == ["mean", "basis"]
        assert side["mean"].shape == (3, 8) and side["mean"].dtype == torch_dtype
        assert side["basis"].shape == (3, 5, 8) and side["basis"].dtype == torch_dtype
        out = PCA(rank=5, dtype=dtype).decode(y, side)
        assert out.shape == x.shape and out.dtype == torch.float32


@settings(max_examples=40)
@given(cache=kv_caches(max_layers=1, max_seq=40, dtypes=(torch.float32,)), dtype=st.sampled_from(("float32", "float16")))
def test_full_rank_reconstructs_within_float_tolerance(cache, dtype):
    x = cache.layers[0].keys
    d = x.shape[-1]
    stage = PCA(rank=d, dtype=dtype)
    y, side = stage.encode(x)
    out = stage.decode(y, side)
    scale = x.abs().amax(dim=(0, 2, 3), keepdim=True) + 1e-30
    assert torch.allclose(out / scale, x / scale, atol=2e-5 * d, rtol=0)
    assert bool(((out.double() - x.double()).abs() <= stage.error_bound(x, side)).all())


@pytest.mark.parametrize("r", [1, 2, 3, 4, 6, 10])
def test_rank_r_error_is_the_discarded_energy(r):
    x = low_rank_tensor(1, b=2, h=2, t=40, d=16, rank=6, noise=0.05)
    stage = PCA(rank=r, dtype="float32")
    y, side = stage.encode(x)
    out = stage.decode(y, side)
    want = discarded_energy(x, side["mean"], r)
    got = per_head_sq_error(x, out)
    assert got == pytest.approx(want, rel=1e-3, abs=1e-6 * float((x.double() ** 2).sum()))
    # no rank-r affine reconstruction with this mean can do better (Eckart–Young)
    assert bool((got <= want * (1 + 1e-3) + 1e-6 * float((x.double() ** 2).sum())).all())


def test_float16_basis_error_stays_close_to_the_discarded_energy():
    x = low_rank_tensor(2, h=2, t=64, d=32, rank=8, noise=0.05)
    stage = PCA(rank=8)
    y, side = stage.encode(x)
    got = per_head_sq_error(x, stage.decode(y, side))
    want = discarded_energy(x, side["mean"], 8)
    assert bool((got <= want * 1.05 + 1e-3).all())


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99, 0.999999, 1.0])
def test_energy_picks_the_smallest_sufficient_rank(energy):
    x = low_rank_tensor(3, h=3, t=50, d=12, rank=5, noise=0.01)
    y, side = PCA(energy=energy, dtype="float32").encode(x)
    r = y.shape[-1]
    kept = []
    for head in range(3):
        xc = x[:, head].reshape(-1, 12).double().numpy() - side["mean"][head].double().numpy()
        ev = np.linalg.svd(xc, compute_uv=False) ** 2
        kept.append(np.cumsum(ev) / ev.sum())
    kept = np.array(kept)
    assert (kept[:, r - 1] >= energy - 1e-9).all()
    if r > 1:
        assert (kept[:, r - 2] < energy + 1e-9).any()


def test_rank_above_head_dim_is_clamped_and_constant_heads_work():
    x = torch.ones(1, 2, 5, 4) * torch.tensor([1.0, -2.0, 3.0, 0.5])
    y, side = PCA(rank=10, dtype="float32").encode(x)
    assert y.shape == (1, 2, 5, 4)
    assert torch.allclose(PCA(rank=10, dtype="float32").decode(y, side), x)
    y, side = PCA().encode(x)  # zero variance: one component is enough
    assert y.shape[-1] == 1
    assert torch.allclose(PCA().decode(y, side), x, atol=1e-3)


def test_encode_refuses_what_it_cannot_fit():
    x = torch.randn(1, 1, 4, 4)
    x[0, 0, 1, 2] = float("nan")
    with pytest.raises(CodecError, match="inf or nan"):
        PCA(rank=2).encode(x)
    with pytest.raises(CodecError, match="float16"):
        PCA(rank=2).encode(torch.full((1, 1, 3, 4), 1e6))
    y, side = PCA(rank=2, dtype="float32").encode(torch.full((1, 1, 3, 4), 1e6))
    assert torch.allclose(PCA(rank=2, dtype="float32").decode(y, side), torch.full((1, 1, 3, 4), 1e6))
    with pytest.raises(CodecError, match="float tensor"):
        PCA(rank=2).encode(torch.zeros(3, 4))


def test_damaged_side_information_raises():
    stage = PCA(rank=3)
    y, side = stage.encode(low_rank_tensor(4, h=2, t=10, d=8))
    bad = {
        "missing": ({"mean": side["mean"]}, y),
        "shape": ({"mean": side["mean"], "basis": side["basis"][:, :2]}, y),
        "dtype": ({"mean": side["mean"], "basis": side["basis"].double()}, y),
        "non-finite": ({"mean": side["mean"], "basis": side["basis"] * float("inf")}, y),
        "mean": ({"mean": side["mean"][:, :3], "basis": side["basis"]}, y),
        "coefficients": (side, y[..., :2]),
        "rank": (side, y[..., :0]),
        "int": (side, y.int()),
    }
    for what, (s, coef) in bad.items():
        with pytest.raises(DecodeError):
            stage.decode(coef, s)


@pytest.mark.parametrize(
    "spec, words",
    [("pca:rank=-1", "rank"), ("pca:energy=0", "energy"), ("pca:energy=1.5", "energy"), ("pca:rank=4,energy=0.5", "not both"),
     ("pca:rank=4,dtype=float64", "dtype")],
)
def test_bad_parameters(spec, words):
    with pytest.raises(SpecError, match=words):
        kvcodec.Pipeline.parse(spec)


# ----------------------------------------------------------------------------- through the wire
SPECS = ["pca:rank=16+int8", "pca:rank=4", "k=pca:rank=8+int8:axis=channel v=int4", "pca+int4:axis=channel+ans",
         "pca:energy=0.9,dtype=float32+fp16", "pca:rank=2+int4+cdelta+zstd"]


@settings(max_examples=20)
@given(cache=kv_caches(max_layers=3, max_seq=30, head_dims=(8, 16, 32)), spec=st.sampled_from(SPECS))
def test_pca_chains_round_trip_through_the_wire(cache, spec):
    payload = kvcodec.encode(cache, spec)
    out = kvcodec.decode(payload)
    for a, b in zip(cache, out):
        assert b.keys.shape == a.keys.shape and b.values.shape == a.values.shape and b.keys.dtype == a.keys.dtype
    assert kvcodec.inspect(payload).total_bytes == len(payload)


def test_the_wire_carries_coefficients_of_the_reduced_shape():
    cache = make_cache(seed=5, layers=2, heads=2, seq=24, head_dim=32)
    p = wire.load(kvcodec.encode(cache, "pca:rank=16+int8"))
    for layer in p.layers:
        assert tuple(layer.keys.data.data.shape) == (1, 2, 24, 16)
        assert tuple(layer.keys.sides[0]["basis"].shape) == (2, 16, 32)
    p = wire.load(kvcodec.encode(cache, "pca:rank=5"))
    assert tuple(p.layers[0].values.data.shape) == (1, 2, 24, 5)
    # the basis costs H·r·D·2 bytes per tensor: it pays off once there are more tokens than that
    long = make_cache(seed=5, layers=1, heads=2, seq=256, head_dim=32)
    assert len(kvcodec.encode(long, "pca:rank=8+int8")) < 0.5 * len(kvcodec.encode(long, "int8"))
