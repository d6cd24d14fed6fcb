"""Hypothesis strategies for KV caches (needs ``hypothesis``: ``pip install 'kvcodec[test]'``).

:func:`kv_caches` draws random but realistic caches: 1 … ``max_layers`` layers; batch;
KV head counts from MQA (1) through GQA to MHA; any head_dim from a list (sometimes a
different one for the values); sequence lengths from one token up; float32, float16 or
bfloat16; N(0, s²) values with a random magnitude s, up to two outlier channels ×50 and an
"attention sink" first token up to ×8 (:func:`kvcodec.testing.caches.realistic_values`);
sometimes an all-zero or constant token; full-attention, sliding-window and
token-selected layers (explicit positions, shared or per KV head); a quarter of the layers
not contiguous in memory.

Tensors stay small (a few thousand elements) so that dozens of examples run in seconds.
"""

from __future__ import annotations

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - exercised only without the test extra
    raise ImportError("kvcodec.testing.strategies needs hypothesis: pip install 'kvcodec[test]'") from exc

import torch

from kvcodec.cache import KVCache

from .caches import make_layer

__all__ = ["kv_caches", "DTYPES", "HEAD_DIMS", "MAGNITUDES"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: powers of two and not (real models use 64, 80, 96, 112, 128, 256)
HEAD_DIMS = (4, 8, 12, 16, 32, 64, 80)
#: standard deviations drawn for the values: from tiny to the float16 limit's region
MAGNITUDES = (1e-3, 0.02, 0.5, 1.0, 4.0, 10.0, 1000.0)


@st.composite
def kv_caches(
    draw,
    *,
    min_layers: int = 1,
    max_layers: int = 3,
    max_batch: int = 2,
    max_heads: int = 4,
    min_seq: int = 1,
    max_seq: int = 24,
    head_dims: tuple[int, ...] = HEAD_DIMS,
    dtypes: tuple[torch.dtype, ...] = DTYPES,
    layer_kinds: tuple[str, ...] = ("full", "full", "sliding", "selected"),
    split_head_dim: bool = True,
    device: torch.device | str | None = None,
) -> KVCache:
    """Random realistic :class:`~kvcodec.cache.KVCache` objects.

    Args:
        min_layers, max_layers: layer count range.
        max_batch: batch size 1 … ``max_batch``.
        max_heads: KV heads 1 … ``max_heads`` (1 is MQA).
        min_seq, max_seq: stored tokens per layer (each layer draws its own).
        head_dims: head_dim choices, powers of two and not (a codec that needs, say,
            multiples of 32 passes ``(32, 64)``).
        dtypes: cache dtypes to draw from (float32, float16, bfloat16).
        layer_kinds: drawn per layer: ``"full"``, ``"sliding"``, ``"selected"``
            (:func:`kvcodec.testing.caches.make_layer`); repeat an entry to weight it.
        split_head_dim: sometimes give the values another head_dim than the keys.
        device: where the tensors live (default CPU).
    """
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    gen = torch.Generator().manual_seed(seed)
    n_layers = draw(st.integers(min_layers, max_layers), label="layers")
    batch = draw(st.integers(1, max_batch), label="batch")
    heads = draw(st.integers(1, max_heads), label="kv_heads")
    dtype = draw(st.sampled_from(dtypes), label="dtype")
    head_dim = draw(st.sampled_from(head_dims), label="head_dim")
    head_dim_v = head_dim
    if split_head_dim and draw(st.integers(0, 4), label="split head_dim?") == 0:
        head_dim_v = draw(st.sampled_from(head_dims), label="head_dim_v")
    scale = draw(st.sampled_from(MAGNITUDES), label="magnitude")
    n_out = draw(st.integers(0, 2), label="outlier channels")
    outliers = tuple(int(c) for c in torch.randperm(head_dim, generator=gen)[:n_out])
    sink = draw(st.sampled_from((1.0, 1.0, 3.0, 8.0)), label="first-token gain")
    special = draw(st.sampled_from(("none", "none", "none", "zero token", "constant token")), label="special")
    layers = []
    for _ in range(n_layers):
        seq = draw(st.integers(min_seq, max_seq), label="seq_len")
        kind = draw(st.sampled_from(layer_kinds), label="layer kind")
        extra = draw(st.sampled_from((0, 0, 1, 7, 300)), label="extra seen tokens") if kind != "full" else 0
        per_head = draw(st.booleans(), label="per-head positions") if kind == "selected" else False
        contiguous = draw(st.sampled_from((True, True, True, False)), label="contiguous?")
        layer = make_layer(
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
            per_head=per_head,
            contiguous=contiguous,
            device=device,
        )
        if special != "none":
            t = draw(st.integers(0, seq - 1), label="special token")
            fill = 0.0 if special == "zero token" else float(draw(st.sampled_from((0.5, -3.0, 0.1)), label="constant"))
            keys, values = layer.keys.clone(), layer.values.clone()
            keys[:, :, t, :] = fill
            values[:, :, t, :] = fill
            layer = layer.replace(keys=keys, values=values)
        layers.append(layer)
    return KVCache(layers)
