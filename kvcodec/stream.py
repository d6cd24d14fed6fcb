"""Chunked streaming: a KV cache as a sequence of independently decodable chunks.

A chunk is a 28-byte chunk header followed by a complete wire-format v1 payload
(``specs/wire-format.md``) holding a contiguous run of the cache's layers, so a receiver
can decode chunk ``k`` — and run the question through its layers — while later chunks
are still on the wire. Specified in ``specs/streaming.md`` §2::

    chunk header  magic "KVCS" · version u8 · flags u8 · index u16 · count u16
                  first_layer u16 · layer_count u16 · total_layers u16
                  stream_id u32 · payload_len u32 · header_crc u32
    payload       payload_len bytes: a v1 payload of layer_count layers

The stream on the wire is the chunks one after another (``b"".join(chunks)``);
transmitted bytes are ``sum(len(chunk))``. Each chunk may use its own pipeline (the
level an adaptive sender picked for it): the pipeline is applied to the *whole* cache, so
per-layer rules (``L0=fp16``) keep naming global layers, and the chunk carries the
sections of its layers and the chains they use.

Decoding treats chunks as untrusted: any damaged, foreign, duplicated, missing or
out-of-order chunk raises :class:`~kvcodec.errors.DecodeError`.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Iterable, Sequence

import attrs
import torch

from kvcodec import api, wire
from kvcodec.cache import KVCache
from kvcodec.errors import CodecError, DecodeError
from kvcodec.pipeline import Pipeline

__all__ = [
    "CHUNK_MAGIC",
    "CHUNK_VERSION",
    "CHUNK_HEADER_BYTES",
    "ChunkHeader",
    "DecodedChunk",
    "StreamDecoder",
    "layer_ranges",
    "encode_chunks",
    "read_chunk_header",
    "decode_chunk",
    "decode_chunks",
    "split_stream",
]

CHUNK_MAGIC = b"KVCS"
CHUNK_VERSION = 1
_HEAD = struct.Struct("<4sBBHHHHHII")  # everything the CRC covers
_CRC = struct.Struct("<I")
CHUNK_HEADER_BYTES = _HEAD.size + _CRC.size  # 28


@attrs.frozen
class ChunkHeader:
    """The fields of a chunk header (``specs/streaming.md`` §2.1)."""

    index: int
    count: int
    first_layer: int
    layer_count: int
    total_layers: int
    stream_id: int
    payload_len: int
    version: int = CHUNK_VERSION
    flags: int = 0

    @property
    def size(self) -> int:
        """Bytes of the whole chunk: header + payload."""
        return CHUNK_HEADER_BYTES + self.payload_len

    def pack(self) -> bytes:
        head = _HEAD.pack(CHUNK_MAGIC, self.version, self.flags, self.index, self.count, self.first_layer,
                          self.layer_count, self.total_layers, self.stream_id, self.payload_len)
        return head + _CRC.pack(zlib.crc32(head))


@attrs.frozen(eq=False)
class DecodedChunk:
    """One decoded chunk: its header and the :class:`KVCache` of its ``layer_count`` layers
    (layer ``i`` of ``cache`` is layer ``header.first_layer + i`` of the whole cache)."""

    header: ChunkHeader
    cache: KVCache


def layer_ranges(num_layers: int, layers_per_chunk: int) -> list[tuple[int, int]]:
    """``(first_layer, layer_count)`` of each chunk: runs of ``layers_per_chunk`` layers,
    the last one shorter when it does not divide ``num_layers``.

    Raises:
        ValueError: ``layers_per_chunk < 1`` or ``num_layers < 1``.
    """
    if isinstance(layers_per_chunk, bool) or not isinstance(layers_per_chunk, int) or layers_per_chunk < 1:
        raise ValueError(f"layers_per_chunk must be a whole number >= 1, got {layers_per_chunk!r}")
    if num_layers < 1:
        raise ValueError(f"a cache to stream needs at least one layer, got {num_layers}")
    return [(a, min(layers_per_chunk, num_layers - a)) for a in range(0, num_layers, layers_per_chunk)]


def _slice(payload: wire.Payload, first: int, count: int) -> wire.Payload:
    """The payload of layers ``first … first+count−1`` with the chains they use, renumbered
    in order of first use (keys before values, layer by layer)."""
    layers = payload.layers[first : first + count]
    order: dict[int, int] = {}
    for layer in layers:
        for enc in (layer.keys, layer.values):
            order.setdefault(enc.chain, len(order))
    chains = tuple(payload.chains[i] for i in order)
    renumbered = tuple(
        attrs.evolve(
            layer,
            keys=attrs.evolve(layer.keys, chain=order[layer.keys.chain]),
            values=attrs.evolve(layer.values, chain=order[layer.values.chain]),
        )
        for layer in layers
    )
    return wire.Payload(payload.batch, chains, payload.cache_stages, renumbered)


def encode_chunks(
    cache: KVCache,
    pipelines: Pipeline | str | Sequence[Pipeline | str],
    layers_per_chunk: int,
    *,
    stream_id: int | None = None,
    **context: Any,
) -> list[bytes]:
    """Encode ``cache`` as a stream of chunks of ``layers_per_chunk`` layers each.

    Args:
        cache: the KV cache.
        pipelines: one pipeline (spec string or :class:`Pipeline`) for every chunk, or a
            sequence with one per chunk (chunk ``k`` encoded at its own level).
        layers_per_chunk: layers per chunk (the last chunk may hold fewer).
        stream_id: the 32-bit stream identifier written in every chunk; default: the
            CRC-32 of chunk 0's payload.
        context: handed to cache stages, as :func:`kvcodec.api.encode_payload`.

    Returns:
        The chunks, in stream order; send ``b"".join(chunks)``.

    Raises:
        ValueError: bad ``layers_per_chunk``, wrong number of pipelines, bad ``stream_id``.
        SpecError, CodecError: as :func:`kvcodec.api.encode_payload`.
    """
    ranges = layer_ranges(cache.num_layers, layers_per_chunk)
    if isinstance(pipelines, (str, Pipeline)):
        per_chunk = [api.as_pipeline(pipelines)] * len(ranges)
    else:
        per_chunk = [api.as_pipeline(p) for p in pipelines]
        if len(per_chunk) != len(ranges):
            raise ValueError(f"{len(per_chunk)} pipelines given for {len(ranges)} chunks")
    if len(ranges) > 0xFFFF or cache.num_layers > wire.MAX_LAYERS:
        raise CodecError(f"cannot stream {cache.num_layers} layers: at most {wire.MAX_LAYERS}")
    if stream_id is not None and (isinstance(stream_id, bool) or not isinstance(stream_id, int)
                                  or not 0 <= stream_id <= 0xFFFFFFFF):
        raise ValueError(f"stream_id must be an integer in 0 … 2**32−1, got {stream_id!r}")
    encoded: dict[Pipeline, wire.Payload] = {}
    bodies = []
    for (first, count), pipeline in zip(ranges, per_chunk):
        if pipeline not in encoded:  # one encode of the whole cache per distinct level
            encoded[pipeline] = api.encode_payload(cache, pipeline, **context)
        bodies.append(wire.dump(_slice(encoded[pipeline], first, count)))
    sid = zlib.crc32(bodies[0]) if stream_id is None else stream_id
    total = cache.num_layers
    return [
        ChunkHeader(k, len(ranges), first, count, total, sid, len(body)).pack() + body
        for k, ((first, count), body) in enumerate(zip(ranges, bodies))
    ]


def read_chunk_header(data: bytes | bytearray | memoryview) -> ChunkHeader:
    """Parse and check a chunk header (the first 28 bytes of ``data``).

    The payload length is checked against ``len(data)`` by :func:`decode_chunk`, not here.

    Raises:
        DecodeError: truncated, bad magic, unsupported version, non-zero flags, checksum
            mismatch, or inconsistent fields.
    """
    buf = memoryview(data).cast("B")
    if len(buf) < CHUNK_HEADER_BYTES:
        raise DecodeError(f"truncated chunk: {len(buf)} bytes is shorter than the {CHUNK_HEADER_BYTES}-byte chunk header")
    magic, version, flags, index, count, first, layers, total, sid, length = _HEAD.unpack(buf[: _HEAD.size])
    if magic != CHUNK_MAGIC:
        raise DecodeError(f"bad chunk magic {bytes(magic)!r}: not a kvcodec stream chunk (expected {CHUNK_MAGIC!r})")
    if version != CHUNK_VERSION:
        raise DecodeError(f"unsupported chunk version {version} (this reader handles {CHUNK_VERSION})")
    (crc,) = _CRC.unpack(buf[_HEAD.size : CHUNK_HEADER_BYTES])
    if crc != zlib.crc32(buf[: _HEAD.size]):
        raise DecodeError("checksum mismatch in the chunk header")
    if flags != 0:
        raise DecodeError(f"chunk header flags {flags:#x}: no flag is defined in version {CHUNK_VERSION}")
    if not 1 <= total <= wire.MAX_LAYERS:
        raise DecodeError(f"chunk header: total layers {total} outside 1..{wire.MAX_LAYERS}")
    if not 1 <= count <= total:
        raise DecodeError(f"chunk header: chunk count {count} outside 1..{total} (total layers)")
    if index >= count:
        raise DecodeError(f"chunk header: chunk index {index} is not below the chunk count {count}")
    if layers < 1 or first + layers > total:
        raise DecodeError(f"chunk header: layers {first}..{first + layers - 1} do not fit in {total} layers")
    return ChunkHeader(index, count, first, layers, total, sid, length, version, flags)


def decode_chunk(data: bytes | bytearray | memoryview, *, device: torch.device | str | None = None,
                 registry=None) -> DecodedChunk:
    """Decode one chunk on its own: header, then its v1 payload.

    Raises:
        DecodeError: anything wrong with the header (:func:`read_chunk_header`), a payload
            length that disagrees with the bytes given, or a payload that does not decode
            (:func:`kvcodec.api.decode`) or holds another number of layers than announced.
    """
    buf = memoryview(data).cast("B")
    header = read_chunk_header(buf)
    got = len(buf) - CHUNK_HEADER_BYTES
    if got < header.payload_len:
        raise DecodeError(f"truncated chunk {header.index}: payload of {header.payload_len} bytes announced, {got} present")
    if got > header.payload_len:
        raise DecodeError(f"chunk {header.index}: {got - header.payload_len} trailing bytes after its payload")
    try:
        payload = wire.load(buf[CHUNK_HEADER_BYTES:], registry)
    except DecodeError as exc:
        raise DecodeError(f"chunk {header.index}: {exc}") from None
    if len(payload.layers) != header.layer_count:
        raise DecodeError(f"chunk {header.index}: payload holds {len(payload.layers)} layers, the header announces "
                          f"{header.layer_count}")
    try:
        cache = api.decode_payload(payload, device)
    except DecodeError as exc:
        raise DecodeError(f"chunk {header.index}: {exc}") from None
    return DecodedChunk(header, cache)


class StreamDecoder:
    """The receiver of a chunk stream: feed chunks in stream order, get each chunk's layers
    at once (to prefill through them), and the whole cache at the end.

    Chunks must come in order ``0, 1, …, count−1`` (the transport delivers in order; a
    chunk out of place means the stream is broken) and agree with chunk 0 on the chunk
    count, total layers, stream id, batch size and dtype; their layer runs must tile
    ``0 … total−1``.
    """

    def __init__(self, *, device: torch.device | str | None = None, registry=None):
        self._device, self._registry = device, registry
        self._first: DecodedChunk | None = None
        self._layers: list = []
        self._next_index = 0
        self._next_layer = 0

    @property
    def complete(self) -> bool:
        """Whether every chunk of the stream has been fed."""
        return self._first is not None and self._next_index == self._first.header.count

    def feed(self, data: bytes | bytearray | memoryview) -> DecodedChunk:
        """Decode the next chunk.

        Raises:
            DecodeError: as :func:`decode_chunk`, or the chunk is not the next one of this
                stream (duplicated, reordered, missing, foreign or extra).
        """
        chunk = decode_chunk(data, device=self._device, registry=self._registry)
        h = chunk.header
        first = self._first
        if first is not None:
            f = first.header
            if self.complete:
                raise DecodeError(f"extra chunk {h.index}: the stream's {f.count} chunks have all arrived")
            for name in ("count", "total_layers", "stream_id"):
                if getattr(h, name) != getattr(f, name):
                    raise DecodeError(f"chunk {h.index}: {name.replace('_', ' ')} {getattr(h, name)} differs from "
                                      f"chunk 0's {getattr(f, name)} (a chunk of another stream)")
            if chunk.cache.batch_size != first.cache.batch_size or chunk.cache.dtype != first.cache.dtype:
                raise DecodeError(f"chunk {h.index}: batch {chunk.cache.batch_size} / dtype {chunk.cache.dtype} differ "
                                  f"from chunk 0's {first.cache.batch_size} / {first.cache.dtype}")
        if h.index != self._next_index:
            raise DecodeError(f"chunk {h.index} arrived where chunk {self._next_index} was expected "
                              f"(duplicated, reordered or missing chunk)")
        if h.first_layer != self._next_layer:
            raise DecodeError(f"chunk {h.index} starts at layer {h.first_layer}, expected layer {self._next_layer}")
        if h.index == h.count - 1 and h.first_layer + h.layer_count != h.total_layers:
            raise DecodeError(f"last chunk {h.index} ends at layer {h.first_layer + h.layer_count - 1}, "
                              f"the stream has {h.total_layers} layers")
        if first is None:
            self._first = chunk
        self._layers.extend(chunk.cache)
        self._next_index += 1
        self._next_layer += h.layer_count
        return chunk

    def cache(self) -> KVCache:
        """The whole cache, once every chunk has been fed.

        Raises:
            DecodeError: chunks are missing.
        """
        if not self.complete:
            expected = "at least 1" if self._first is None else str(self._first.header.count)
            raise DecodeError(f"incomplete stream: {self._next_index} of {expected} chunks arrived")
        return KVCache(self._layers)


def decode_chunks(chunks: Iterable[bytes | bytearray | memoryview], *, device: torch.device | str | None = None,
                  registry=None) -> KVCache:
    """Decode a whole stream given as its chunks, in order, into one :class:`KVCache`.

    Raises:
        DecodeError: as :meth:`StreamDecoder.feed` and :meth:`StreamDecoder.cache`.
    """
    decoder = StreamDecoder(device=device, registry=registry)
    for chunk in chunks:
        decoder.feed(chunk)
    return decoder.cache()


def split_stream(data: bytes | bytearray | memoryview) -> list[bytes]:
    """Cut a byte stream of consecutive chunks into chunks, by their headers' lengths
    (each header is checked; payloads are not decoded).

    Raises:
        DecodeError: a damaged header, or a chunk cut short at the end of ``data``.
    """
    buf = memoryview(data).cast("B")
    out, pos = [], 0
    while pos < len(buf):
        header = read_chunk_header(buf[pos:])
        end = pos + header.size
        if end > len(buf):
            raise DecodeError(f"truncated stream: chunk {header.index} needs {header.size} bytes, {len(buf) - pos} left")
        out.append(bytes(buf[pos:end]))
        pos = end
    return out
