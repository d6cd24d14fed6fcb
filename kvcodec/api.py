"""The real path: KV cache + pipeline → bytes, and bytes → KV cache.

    cache ──cache stages──► cache' ──per layer, keys/values: chain.encode──► Payload ──wire.dump──► bytes
    bytes ──wire.load──► Payload ──per layer: chain.decode──► cache'   (ready for the model)

"Transmitted bytes" is ``len(encode(cache, pipeline))``: header, geometry, positions, side
information, codes and checksums included.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from kvcodec import wire
from kvcodec.cache import KVCache, LayerKV
from kvcodec.chain import Chain
from kvcodec.codec import Codes
from kvcodec.errors import DecodeError
from kvcodec.pipeline import Pipeline

__all__ = ["encode", "decode", "inspect", "as_pipeline", "encode_payload", "decode_payload", "PayloadInfo"]


def as_pipeline(pipeline: Pipeline | str) -> Pipeline:
    """A :class:`Pipeline` from a pipeline or a spec string (raises ``SpecError``)."""
    return pipeline if isinstance(pipeline, Pipeline) else Pipeline.parse(pipeline)


def encode_payload(cache: KVCache, pipeline: Pipeline | str, **context: Any) -> wire.Payload:
    """Run the pipeline on ``cache`` and return the structured payload (not yet bytes).

    ``context`` is handed to cache stages (e.g. ``question_ids`` for question-aware
    token selection).

    Raises:
        SpecError: if ``pipeline`` is a malformed spec string.
        CodecError: if the pipeline does not fit the cache (layer out of range, group size).
    """
    pipeline = as_pipeline(pipeline)
    for stage in pipeline.cache_stages:
        cache = stage.apply(cache, context)
    pipeline.check(cache.num_layers)
    chains: list[Chain] = []
    index: dict[Chain, int] = {}

    def encode_tensor(chain: Chain, x: torch.Tensor) -> wire.EncodedTensor:
        if chain not in index:
            index[chain] = len(chains)
            chains.append(chain)
        data, sides = chain.encode(x)
        return wire.EncodedTensor(index[chain], sides, data)

    layers = []
    for i, layer in enumerate(cache):
        layers.append(
            wire.EncodedLayer(
                layer_type=layer.layer_type,
                sliding_window=layer.sliding_window,
                seen_tokens=layer.seen_tokens,
                dtype=layer.keys.dtype,
                kv_heads=layer.kv_heads,
                seq_len=layer.seq_len,
                head_dim_k=layer.head_dim,
                head_dim_v=layer.values.shape[-1],
                positions=None if layer.has_contiguous_positions else layer.positions,
                keys=encode_tensor(pipeline.chain_for(i, "k"), layer.keys),
                values=encode_tensor(pipeline.chain_for(i, "v"), layer.values),
            )
        )
    return wire.Payload(cache.batch_size, tuple(chains), pipeline.cache_stages, tuple(layers))


def encode(cache: KVCache, pipeline: Pipeline | str, **context: Any) -> bytes:
    """Encode ``cache`` with ``pipeline`` into wire-format v1 bytes (``specs/wire-format.md``).

    Raises:
        SpecError, CodecError: as :func:`encode_payload`.
    """
    return wire.dump(encode_payload(cache, pipeline, **context))


def _decode_tensor(payload: wire.Payload, enc: wire.EncodedTensor, shape, device, what: str) -> torch.Tensor:
    data = enc.data
    if device is not None:
        if isinstance(data, Codes):
            data = Codes(data.data.to(device), data.bits)
        elif isinstance(data, torch.Tensor):
            data = data.to(device)
    sides = tuple({k: t.to(device) if device is not None else t for k, t in side.items()} for side in enc.sides)
    try:
        x = payload.chains[enc.chain].decode(data, sides)
    except DecodeError as exc:
        raise DecodeError(f"{what}: {exc}") from None
    if tuple(x.shape) != tuple(shape):
        raise DecodeError(f"inconsistent geometry: {what} decode to {tuple(x.shape)}, the section declares {shape}")
    return x


def _saturating_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast to the cache dtype; finite values beyond its range saturate instead of becoming
    ±inf (a quantizer's top code may land a little above the group's maximum, e.g. just
    past FP16's 65504)."""
    if x.dtype == dtype:
        return x
    limit = torch.finfo(dtype).max
    if limit < torch.finfo(x.dtype).max:
        x = torch.where(torch.isinf(x), x, x.clamp(-limit, limit))
    return x.to(dtype)


def decode_payload(payload: wire.Payload, device: torch.device | str | None = None) -> KVCache:
    """Undo every layer's chains and rebuild the :class:`KVCache` (in the dtype it was sent).

    Raises:
        DecodeError: if a stage rejects its data or the result disagrees with the geometry.
    """
    layers = []
    for i, enc in enumerate(payload.layers):
        b, h, t = payload.batch, enc.kv_heads, enc.seq_len
        keys = _decode_tensor(payload, enc.keys, (b, h, t, enc.head_dim_k), device, f"layer {i} keys")
        values = _decode_tensor(payload, enc.values, (b, h, t, enc.head_dim_v), device, f"layer {i} values")
        keys, values = _saturating_cast(keys, enc.dtype), _saturating_cast(values, enc.dtype)
        kw = dict(layer_type=enc.layer_type, sliding_window=enc.sliding_window)
        if enc.positions is None:
            layers.append(LayerKV.contiguous(keys, values, enc.seen_tokens, **kw))
        else:
            layers.append(LayerKV(keys, values, enc.positions.to(keys.device), enc.seen_tokens, **kw))
    return KVCache(layers)


def decode(data: bytes | bytearray | memoryview, *, device: torch.device | str | None = None, registry=None) -> KVCache:
    """Decode wire-format bytes into a :class:`KVCache` on ``device`` (default: CPU).

    The result converts to a transformers cache with ``.to_dynamic_cache()``.

    Raises:
        DecodeError: truncated, bad magic, unsupported version, unknown codec, checksum
            mismatch, inconsistent geometry (message says which).
    """
    return decode_payload(wire.load(data, registry), device)


@attrs.frozen
class LayerInfo:
    index: int
    layer_type: str
    kv_heads: int
    seq_len: int
    seen_tokens: int
    head_dim: int
    head_dim_v: int
    dtype: str
    keys: str  # chain spec
    values: str
    wire_bytes: int


@attrs.frozen
class PayloadInfo:
    """What :func:`inspect` reports about a payload (all sizes in bytes)."""

    total_bytes: int
    header_bytes: int
    version: str
    batch: int
    cache_stages: tuple[str, ...]
    layers: tuple[LayerInfo, ...]

    @property
    def elements(self) -> int:
        """Key and value elements the payload describes (after token selection)."""
        return sum(self.batch * l.kv_heads * l.seq_len * (l.head_dim + l.head_dim_v) for l in self.layers)


def inspect(data: bytes | bytearray | memoryview, registry=None) -> PayloadInfo:
    """Parse and verify a payload (all checksums) without undoing its chains.

    Raises:
        DecodeError: as :func:`decode`.
    """
    payload = wire.load(data, registry)
    layers = tuple(
        LayerInfo(
            i,
            l.layer_type,
            l.kv_heads,
            l.seq_len,
            l.seen_tokens,
            l.head_dim_k,
            l.head_dim_v,
            str(l.dtype).replace("torch.", ""),
            payload.chains[l.keys.chain].describe(),
            payload.chains[l.values.chain].describe(),
            l.wire_bytes,
        )
        for i, l in enumerate(payload.layers)
    )
    version = ".".join(map(str, payload.version))
    stages = tuple(s.describe() for s in payload.cache_stages)
    return PayloadInfo(memoryview(data).nbytes, payload.header_bytes, version, payload.batch, stages, layers)
