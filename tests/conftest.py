"""Shared fixtures, hypothesis strategies and helpers for kvcodec's tests.

The central strategy is :func:`kv_caches`: random but realistic KV caches (GQA/MQA head
counts, short sequences, every float dtype, outlier channels ×50 and a large first
"attention sink" token, sliding-window layers that have seen more tokens than they store,
token-selected layers with explicit positions). Tensors stay small so the whole suite runs
in well under two minutes on a 2-core CPU.

Hypothesis profiles: ``default`` (no deadline: CPU timing on shared runners is noisy) and
``thorough`` (1000 examples for tests that do not set their own count), picked with
``HYPOTHESIS_PROFILE=thorough``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import zlib
from typing import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from kvcodec.cache import SLIDING_ATTENTION, KVCache, LayerKV

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIMS = (4, 8, 16, 32, 64)
INT_WIDTHS = (2, 3, 4, 5, 6, 7, 8, 16)
FP16_MAX = 65504.0


# ----------------------------------------------------------------------------- caches
def realistic_values(
    gen: torch.Generator,
    shape: tuple[int, ...],
    scale: float,
    outlier_channels: tuple[int, ...] = (),
    sink: float = 1.0,
) -> torch.Tensor:
    """float32 ``[B, H, T, D]``: N(0, scale²), chosen channels ×50, first token ×``sink``,
    clamped to ±60000 so that a float16 cache stays finite."""
    x = torch.randn(shape, generator=gen) * scale
    for c in set(outlier_channels):
        x[..., c] *= 50.0
    x[:, :, 0, :] *= sink
    return x.clamp(-60000.0, 60000.0)  # stay finite in float16


def make_layer(
    gen: torch.Generator,
    *,
    batch: int = 1,
    heads: int = 2,
    seq: int = 8,
    head_dim: int = 16,
    head_dim_v: int | None = None,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    outliers: tuple[int, ...] = (),
    sink: float = 1.0,
    kind: str = "full",
    extra_seen: int = 0,
    window: int | None = None,
    per_head: bool = False,
) -> LayerKV:
    """One layer. ``kind``: ``"full"`` (contiguous), ``"sliding"`` (window ≥ seq, seen =
    seq + extra_seen) or ``"selected"`` (explicit non-contiguous positions, shared or per head)."""
    dv = head_dim if head_dim_v is None else head_dim_v
    k = realistic_values(gen, (batch, heads, seq, head_dim), scale, tuple(c for c in outliers if c < head_dim), sink)
    v = realistic_values(gen, (batch, heads, seq, dv), scale, tuple(c for c in outliers if c < dv), sink)
    k, v = k.to(dtype), v.to(dtype)
    if kind == "full":
        return LayerKV.contiguous(k, v)
    if kind == "sliding":
        w = window if window is not None else seq + 1
        return LayerKV.contiguous(k, v, seq + extra_seen, layer_type=SLIDING_ATTENTION, sliding_window=w)
    seen = seq + max(extra_seen, 1)
    rows = heads if per_head else 1
    pos = torch.stack([torch.randperm(seen, generator=gen)[:seq].sort().values for _ in range(rows)])
    return LayerKV(k, v, pos if per_head else pos[0], seen)


def make_cache(seed: int = 0, layers: int = 2, **kw) -> KVCache:
    """A deterministic cache of ``layers`` identical-geometry layers (see :func:`make_layer`)."""
    gen = torch.Generator().manual_seed(seed)
    return KVCache(make_layer(gen, **kw) for _ in range(layers))


@st.composite
def kv_caches(
    draw,
    *,
    max_layers: int = 4,
    max_batch: int = 2,
    max_heads: int = 4,
    max_seq: int = 40,
    head_dims: tuple[int, ...] = HEAD_DIMS,
    dtypes: tuple[torch.dtype, ...] = DTYPES,
    layer_kinds: tuple[str, ...] = ("full", "full", "sliding", "selected"),
    split_head_dim: bool = True,
    min_layers: int = 1,
) -> KVCache:
    """Random KV caches.

    1–``max_layers`` layers; batch 1–``max_batch``; kv_heads 1–``max_heads`` (MQA … GQA);
    seq_len 1–``max_seq`` per layer; head_dim from ``head_dims`` (sometimes a different
    head_dim for the values); one dtype for the whole cache; values N(0, s²) with a random
    scale s, up to two outlier channels ×50 and a first token up to ×8; layer kinds drawn
    from ``layer_kinds``: contiguous full attention, sliding (seen_tokens ≥ seq_len,
    sometimes >) or token-selected (explicit positions, shared or per KV head).
    """
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    gen = torch.Generator().manual_seed(seed)
    n_layers = draw(st.integers(min_layers, max_layers), label="layers")
    batch = draw(st.integers(1, max_batch), label="batch")
    heads = draw(st.integers(1, max_heads), label="kv_heads")
    dtype = draw(st.sampled_from(dtypes), label="dtype")
    head_dim = draw(st.sampled_from(head_dims), label="head_dim")
    head_dim_v = head_dim
    if split_head_dim and draw(st.integers(0, 4), label="split?") == 0:
        head_dim_v = draw(st.sampled_from(head_dims), label="head_dim_v")
    scale = draw(st.sampled_from((1e-3, 0.02, 0.5, 1.0, 4.0, 10.0)), label="scale")
    n_out = draw(st.integers(0, 2), label="outlier channels")
    outliers = tuple(int(c) for c in torch.randperm(head_dim, generator=gen)[:n_out])
    sink = draw(st.sampled_from((1.0, 1.0, 3.0, 8.0)), label="sink")
    layers = []
    for _ in range(n_layers):
        seq = draw(st.integers(1, max_seq), label="seq_len")
        kind = draw(st.sampled_from(layer_kinds), label="kind")
        extra = draw(st.sampled_from((0, 0, 1, 7, 300)), label="extra seen") if kind != "full" else 0
        window = seq + draw(st.integers(0, 3), label="window slack") if kind == "sliding" else None
        layers.append(
            make_layer(
                gen,
                batch=batch,
                heads=heads,
                seq=seq,
                head_dim=head_dim,
                head_dim_v=head_dim_v,
                dtype=dtype,
                scale=scale,
                outliers=outliers,
                sink=sink,
                kind=kind,
                extra_seen=extra,
                window=window,
                per_head=draw(st.booleans(), label="per-head positions") if kind == "selected" else False,
            )
        )
    return KVCache(layers)


# ----------------------------------------------------------------------------- specs
def int_stage(bits: int, axis: str = "token", group: int = 0, sym: bool = False) -> str:
    """Spec text of a uniform quantizer, showing every parameter."""
    return f"int{bits}:axis={axis},group={group},sym={'true' if sym else 'false'}"


@st.composite
def quantizer_specs(draw, token_groups=(0, 2, 4), channel_groups=(0, 1, 3, 5, 16, 100)) -> str:
    """A single-stage spec text (identity, fp16, int<b> or sign with random parameters).
    Token-axis groups are drawn from divisors of every head_dim in :data:`HEAD_DIMS`."""
    kind = draw(st.sampled_from(("identity", "fp16", "int", "int", "int", "sign")))
    if kind in ("identity", "fp16"):
        return kind
    axis = draw(st.sampled_from(("token", "channel")))
    group = draw(st.sampled_from(token_groups if axis == "token" else channel_groups))
    params = []
    if draw(st.booleans()):
        params.append(f"axis={axis}")
    elif axis == "channel":
        params.append("axis=channel")
    if group:
        params.append(f"group={group}")
    if kind == "sign":
        return "sign" + (":" + ",".join(params) if params else "")
    bits = draw(st.sampled_from(INT_WIDTHS))
    sym = draw(st.sampled_from((None, True, False)))
    if sym is not None:
        params.append(f"sym={'true' if sym else 'false'}")
    return f"int{bits}" + (":" + ",".join(params) if params else "")


@st.composite
def chain_specs(draw) -> str:
    """A chain: an optional float→float prefix (identity/fp16), then a stage."""
    last = draw(quantizer_specs())
    prefix = draw(st.sampled_from(("", "", "fp16+", "identity+")))
    return prefix + last


@st.composite
def pipeline_specs(draw, num_layers: int = 4) -> str:
    """A pipeline spec whose layer overrides name only layers < ``num_layers``."""
    if draw(st.booleans()):
        clauses = [draw(chain_specs())]
    else:
        clauses = [f"k={draw(chain_specs())}", f"v={draw(chain_specs())}"]
        if draw(st.booleans()):
            clauses.reverse()
    for _ in range(draw(st.integers(0, 2))):
        layers = draw(st.lists(st.integers(0, num_layers - 1), min_size=1, max_size=3, unique=True))
        target = "L" + ",".join(map(str, layers)) + draw(st.sampled_from(("", ".k", ".v")))
        clauses.insert(draw(st.integers(0, len(clauses))), f"{target}={draw(chain_specs())}")
    return " ".join(clauses)


# ----------------------------------------------------------------------------- checks
def assert_same_structure(a: KVCache, b: KVCache, device: torch.device | str | None = None) -> None:
    """Everything but the values must survive a round trip exactly."""
    assert a.num_layers == b.num_layers
    assert b.batch_size == a.batch_size
    assert b.dtype == a.dtype
    assert b.device == torch.device(device if device is not None else a.device)
    for i, (x, y) in enumerate(zip(a, b)):
        assert y.keys.shape == x.keys.shape, i
        assert y.values.shape == x.values.shape, i
        assert y.keys.dtype == y.values.dtype == x.keys.dtype, i
        assert y.seen_tokens == x.seen_tokens, i
        assert y.layer_type == x.layer_type, i
        assert y.sliding_window == x.sliding_window, i
        assert y.positions.dtype == torch.int64
        px = x.positions.cpu()
        py = y.positions.cpu()
        if px.dim() == 2 and bool((px == px[0]).all()) and py.dim() == 1:
            px = px[0]  # identical per-head rows may travel as one shared row
        assert py.shape == px.shape, i
        assert torch.equal(py, px), i


def dtype_eps(dtype: torch.dtype) -> float:
    """Relative rounding error of a cast to ``dtype`` (half an ulp at 1, i.e. eps/2),
    rounded up to a full eps for slack."""
    return torch.finfo(dtype).eps


def subnormal_step(dtype: torch.dtype) -> float:
    """Absolute spacing of ``dtype`` below its smallest normal (where rounding stops being relative)."""
    f = torch.finfo(dtype)
    return f.smallest_normal * f.eps


def expand_stats(stat: torch.Tensor, shape: tuple[int, ...], axis: str, group: int) -> torch.Tensor:
    """Broadcast per-group side information back to ``[B,H,T,D]`` elements, independently of
    the codec's own grouping code.

    token axis: ``stat`` is ``[B,H,T,D/G]`` and channel ``j`` belongs to group ``j // G``;
    channel axis: ``stat`` is ``[B,H,D,ceil(T/G)]`` and token ``t`` to group ``t // G``.
    """
    b, h, t, d = shape
    stat = stat.float()
    if axis == "token":
        g = group or d
        idx = torch.arange(d) // g
        return stat[..., idx]  # [B,H,T,D]
    g = min(group or t, t)
    idx = torch.arange(t) // g
    return stat[..., idx].transpose(-1, -2)  # [B,H,D,T] → [B,H,T,D]


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail (TimeoutError) if the block runs longer than ``seconds`` (SIGALRM; Unix main thread)."""
    if not hasattr(signal, "setitimer"):  # pragma: no cover - Windows
        yield
        return

    def on_alarm(_sig, _frame):
        raise TimeoutError(f"took longer than {seconds} s (hang?)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------------------- raw payload surgery
PREAMBLE_SIZE = 12


def split_payload(data: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """(preamble, header, [section bodies]) of a well-formed payload, by its length fields."""
    header_len = struct.unpack_from("<I", data, 8)[0]
    pre, header = data[:PREAMBLE_SIZE], data[PREAMBLE_SIZE : PREAMBLE_SIZE + header_len]
    pos, bodies = PREAMBLE_SIZE + header_len + 4, []
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        bodies.append(data[pos + 4 : pos + 4 + n])
        pos += 8 + n
    assert pos == len(data)
    return pre, header, bodies


def join_payload(pre: bytes, header: bytes, bodies: list[bytes]) -> bytes:
    """Reassemble a payload with correct lengths and CRC-32s (``zlib.crc32``)."""
    pre = pre[:8] + struct.pack("<I", len(header))
    out = bytearray(pre + header + struct.pack("<I", zlib.crc32(pre + header)))
    for body in bodies:
        length = struct.pack("<I", len(body))
        out += length + body + struct.pack("<I", zlib.crc32(length + body))
    return bytes(out)


@pytest.fixture
def fresh_registry():
    """Reset kvcodec's process-wide registry before and after a test that changes plugins."""
    from kvcodec.plugins import reset_registry

    reset_registry()
    yield
    reset_registry()


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)

