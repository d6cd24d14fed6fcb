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
from typing import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from kvcodec import wire
from kvcodec.cache import KVCache, LayerKV
from kvcodec.testing import caches
from kvcodec.testing.checks import payload_fuzz

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
realistic_values = caches.realistic_values


def make_layer(gen: torch.Generator, *, seq: int = 8, window: int | None = None, **kw) -> LayerKV:
    """:func:`kvcodec.testing.caches.make_layer`, with a sliding window of ``seq + 1`` by
    default (a sliding layer not yet full) unless ``window`` is given."""
    return caches.make_layer(gen, seq=seq, window=seq + 1 if window is None else window, **kw)


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
PREAMBLE_SIZE = wire.PREAMBLE.size
split_payload = payload_fuzz.split_payload
join_payload = payload_fuzz.join_payload


@pytest.fixture
def fresh_registry():
    """Reset kvcodec's process-wide registry before and after a test that changes plugins."""
    from kvcodec.plugins import reset_registry

    reset_registry()
    yield
    reset_registry()


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)

