"""The KV cache container that flows through kvcodec.

model → **KV cache** → codec chain → bytes → link → bytes → codec chain → **KV cache** → model

A :class:`KVCache` holds, per decoder layer, the keys and values a model stored during
prefill, plus what a receiver needs to use them: each layer's absolute token positions,
how many tokens the layer has seen, and its attention type (full or sliding-window, as in
Gemma-3, whose sliding layers keep only the last ``sliding_window - 1`` tokens).
It converts losslessly to and from transformers' ``DynamicCache``.
"""

from __future__ import annotations

from typing import Callable, Iterator

import attrs
import torch

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
LAYER_TYPES = (FULL_ATTENTION, SLIDING_ATTENTION)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_layer(inst: "LayerKV", _attr, _value) -> None:
    k, v, p = inst.keys, inst.values, inst.positions
    if k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"keys and values must be 4-D [batch, kv_heads, seq_len, head_dim]; got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"keys {tuple(k.shape)} and values {tuple(v.shape)} differ in batch, kv_heads or seq_len")
    if k.dtype not in FLOAT_DTYPES or v.dtype != k.dtype:
        raise ValueError(f"keys and values must share one of {FLOAT_DTYPES}; got {k.dtype} and {v.dtype}")
    if k.device != v.device:
        raise ValueError(f"keys on {k.device} but values on {v.device}")
    heads, seq = k.shape[1], k.shape[2]
    if p.dtype != torch.int64 or p.shape not in ((seq,), (heads, seq)):
        raise ValueError(
            f"positions must be int64 of shape [seq_len]={seq} or [kv_heads, seq_len]=({heads}, {seq});"
            f" got {p.dtype} {tuple(p.shape)}"
        )
    if inst.seen_tokens < seq:
        raise ValueError(f"seen_tokens={inst.seen_tokens} is less than the {seq} stored tokens")
    if inst.layer_type not in LAYER_TYPES:
        raise ValueError(f"layer_type must be one of {LAYER_TYPES}; got {inst.layer_type!r}")
    if (inst.layer_type == SLIDING_ATTENTION) != (inst.sliding_window is not None):
        raise ValueError("sliding_window must be set for sliding_attention layers and only for them")
    if inst.sliding_window is not None and inst.sliding_window < 1:
        raise ValueError(f"sliding_window must be ≥ 1; got {inst.sliding_window}")


@attrs.frozen(eq=False)
class LayerKV:
    """One decoder layer's cached keys and values.

    Attributes:
        keys: ``[batch, kv_heads, seq_len, head_dim]``, float32, float16 or bfloat16.
        values: ``[batch, kv_heads, seq_len, head_dim_v]``, same dtype and device as ``keys``.
        positions: int64, ``[seq_len]`` (shared by all KV heads) or ``[kv_heads, seq_len]``
            (a selector that chose tokens per head): absolute token position of each entry.
        seen_tokens: tokens this layer has processed; the next token's position. It exceeds
            ``seq_len`` for sliding-window layers and after token selection.
        layer_type: ``"full_attention"`` or ``"sliding_attention"``.
        sliding_window: window size in tokens for sliding layers, else ``None``.

    Raises:
        ValueError: at construction, if shapes, dtypes, devices or counts disagree.
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    seen_tokens: int = attrs.field(converter=int)
    layer_type: str = FULL_ATTENTION
    sliding_window: int | None = attrs.field(default=None, validator=_check_layer)

    @classmethod
    def contiguous(cls, keys: torch.Tensor, values: torch.Tensor, seen_tokens: int | None = None, **kw) -> "LayerKV":
        """A layer whose stored tokens are the last ``seq_len`` of ``seen_tokens`` (default: all of them)."""
        seq = keys.shape[-2]
        seen = seq if seen_tokens is None else seen_tokens
        positions = torch.arange(seen - seq, seen, dtype=torch.int64, device=keys.device)
        return cls(keys, values, positions, seen, **kw)

    @property
    def seq_len(self) -> int:
        return self.keys.shape[2]

    @property
    def kv_heads(self) -> int:
        return self.keys.shape[1]

    @property
    def head_dim(self) -> int:
        return self.keys.shape[3]

    @property
    def has_contiguous_positions(self) -> bool:
        """True when positions are ``seen_tokens - seq_len … seen_tokens - 1`` for every head."""
        expected = torch.arange(self.seen_tokens - self.seq_len, self.seen_tokens, device=self.positions.device)
        return bool((self.positions == expected).all())

    def replace(self, **changes) -> "LayerKV":
        return attrs.evolve(self, **changes)


@attrs.frozen(eq=False)
class KVCache:
    """A model's KV cache after prefill: a tuple of :class:`LayerKV`, one per decoder layer.

    Sequence lengths may differ per layer (sliding-window layers, token selection);
    batch size, dtype and device are the same for all layers.

    Raises:
        ValueError: at construction, if there are no layers or layers disagree in batch,
            dtype or device.
    """

    layers: tuple[LayerKV, ...] = attrs.field(converter=tuple)

    @layers.validator
    def _check(self, _attr, layers) -> None:
        if not layers:
            raise ValueError("a KVCache needs at least one layer")
        first = layers[0].keys
        for i, layer in enumerate(layers):
            if not isinstance(layer, LayerKV):
                raise ValueError(f"layer {i} is a {type(layer).__name__}, not a LayerKV")
            k = layer.keys
            if (k.shape[0], k.dtype, k.device) != (first.shape[0], first.dtype, first.device):
                raise ValueError(
                    f"layer {i} has batch/dtype/device {(k.shape[0], k.dtype, k.device)},"
                    f" layer 0 has {(first.shape[0], first.dtype, first.device)}"
                )

    def __iter__(self) -> Iterator[LayerKV]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> LayerKV:
        return self.layers[i]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def batch_size(self) -> int:
        return self.layers[0].keys.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].keys.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].keys.device

    @property
    def num_elements(self) -> int:
        """Number of key and value elements over all layers."""
        return sum(layer.keys.numel() + layer.values.numel() for layer in self.layers)

    @property
    def nbytes(self) -> int:
        """In-memory size of all keys and values, in bytes (not a wire size)."""
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.layers)

    def map(self, fn: Callable[[int, LayerKV], LayerKV]) -> "KVCache":
        """A new cache with ``fn(layer_index, layer)`` applied to every layer."""
        return KVCache(fn(i, layer) for i, layer in enumerate(self.layers))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "KVCache":
        """A copy on another device and/or float dtype (positions follow the device)."""
        return self.map(
            lambda _, layer: layer.replace(
                keys=layer.keys.to(device=device, dtype=dtype),
                values=layer.values.to(device=device, dtype=dtype),
                positions=layer.positions.to(device=device),
            )
        )

    @classmethod
    def stack(cls, caches: "list[KVCache]") -> "KVCache":
        """Concatenate caches of identical geometry along the batch dimension (to run several
        decoded caches through the model as one batch).

        Raises:
            ValueError: if the caches differ in layer count, shapes, positions or layer types.
        """
        if len(caches) == 1:
            return caches[0]
        first = caches[0]
        for c in caches[1:]:
            if c.num_layers != first.num_layers or any(
                (a.keys.shape[1:], a.values.shape[1:], a.seen_tokens, a.layer_type, a.sliding_window)
                != (b.keys.shape[1:], b.values.shape[1:], b.seen_tokens, b.layer_type, b.sliding_window)
                or not torch.equal(a.positions, b.positions)
                for a, b in zip(first, c)
            ):
                raise ValueError("caches of different geometry cannot be stacked into one batch")
        return first.map(
            lambda i, layer: layer.replace(
                keys=torch.cat([c[i].keys for c in caches]), values=torch.cat([c[i].values for c in caches])
            )
        )

    # ------------------------------------------------------------------ transformers
    @classmethod
    def from_dynamic_cache(cls, cache) -> "KVCache":
        """Convert a transformers ``DynamicCache`` (after a prefill) into a :class:`KVCache`.

        Sliding-window layers (``DynamicSlidingWindowLayer``) keep their stored-vs-seen
        counts: ``seen_tokens`` is the layer's ``cumulative_length`` and positions are the
        last ``seq_len`` of them.

        Raises:
            ValueError: if a layer is empty or of a cache type kvcodec does not know.
        """
        layers = []
        for i, layer in enumerate(cache.layers):
            if not getattr(layer, "is_initialized", False) or layer.keys is None or layer.keys.numel() == 0:
                raise ValueError(f"cache layer {i} is empty; run a prefill first")
            if getattr(layer, "is_sliding", False):
                layers.append(
                    LayerKV.contiguous(
                        layer.keys,
                        layer.values,
                        int(layer.cumulative_length),
                        layer_type=SLIDING_ATTENTION,
                        sliding_window=int(layer.sliding_window),
                    )
                )
            else:
                layers.append(LayerKV.contiguous(layer.keys, layer.values))
        return cls(layers)

    def to_dynamic_cache(self):
        """Build a transformers ``DynamicCache`` holding these keys and values, ready for
        ``model(..., past_key_values=cache)`` or ``model.generate``.

        Sliding layers become ``DynamicSlidingWindowLayer`` with ``cumulative_length`` set
        to ``seen_tokens``. The tensors are shared, not copied. A DynamicCache has no notion
        of per-token positions: when positions are not contiguous (after token selection)
        the caller must pass explicit ``position_ids`` (see :mod:`kvcodec.generate`).
        """
        from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

        layers = []
        for layer in self.layers:
            if layer.layer_type == SLIDING_ATTENTION:
                dyn = DynamicSlidingWindowLayer(sliding_window=layer.sliding_window)
            else:
                dyn = DynamicLayer()
            dyn.lazy_initialization(layer.keys, layer.values)
            dyn.keys, dyn.values = layer.keys, layer.values
            if layer.layer_type == SLIDING_ATTENTION:
                dyn.cumulative_length = layer.seen_tokens
            layers.append(dyn)
        cache = DynamicCache()
        cache.layers = layers
        cache.layer_class_to_replicate = None
        return cache
