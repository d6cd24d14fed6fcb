"""Progressive bitstream: a KV cache as bit planes, most significant first (``specs/progressive.md``).

The sender quantizes every layer's keys and values with the embedded mid-rise quantizer
``prog`` (``kvcodec_builtins.progressive``) and cuts the codes into bit planes::

    message 0        header: geometry of every layer, positions, side information (min, range)
    message 1        plane 1 (the most significant bit of every code of every tensor)
    message 2        plane 2
    …
    message B        plane B (the least significant bit)

(or several planes per message, :func:`encode_planes`'s ``planes_per_message``). Every
prefix of the messages decodes (:func:`decode_planes`) to a cache: after ``k`` planes each
element is the ``k``-bit mid-rise quantizer's reconstruction over the same range
(bit-exact), after message 0 alone it is its group's midpoint; later messages refine it
without resending anything. This is embedded / bit-plane coding as in progressive image
transmission (EZW, Shapiro 1993; SPIHT, Said & Pearlman 1996; EBCOT / JPEG 2000, Taubman
2000), without their transforms or context modelling.

Each message is self-describing and checksummed (magic, version, kind, stream id, index,
length, CRC-32). The receiver treats messages as untrusted: a truncated, corrupted,
foreign, repeated or out-of-order message raises :class:`~kvcodec.errors.DecodeError`,
never unpickles or evaluates anything, and leaves an incremental
:class:`ProgressiveDecoder` as it was. The bytes a prefix costs are the ``len()`` of its
messages.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any, Sequence

import attrs
import torch

from kvcodec import bitpack, wire
from kvcodec.api import _saturating_cast, as_pipeline, encode_payload
from kvcodec.cache import SLIDING_ATTENTION, KVCache, LayerKV
from kvcodec.chain import Chain
from kvcodec.codec import Stage
from kvcodec.errors import CodecError, DecodeError
from kvcodec.pipeline import Pipeline

__all__ = [
    "MAGIC",
    "ProgressiveStream",
    "ProgressiveDecoder",
    "encode_planes",
    "decode_planes",
    "stream_info",
    "plane_schedule",
    "stream_bits",
    "StreamInfo",
]

MAGIC = b"KVPG"
MAJOR, MINOR = 1, 0
KIND_HEADER, KIND_PLANES = 0, 1
#: magic · major · minor · kind · flags · stream_id · index · body_len
PREFIX = struct.Struct("<4sBBBBIHI")
CRC = struct.Struct("<I")
OVERHEAD = PREFIX.size + CRC.size  # 22 bytes per message
STAGE_NAME = "prog"
SIDE_NAMES = ("min", "range")
MAX_BITS = 16


def _crc(*parts: bytes | memoryview) -> int:
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    return crc


def _message(kind: int, stream_id: int, index: int, body: bytes) -> bytes:
    if len(body) > 0xFFFFFFFF:
        raise CodecError(f"a progressive message body of {len(body)} bytes exceeds the u32 length field")
    head = PREFIX.pack(MAGIC, MAJOR, MINOR, kind, 0, stream_id, index, len(body))
    return head + body + CRC.pack(_crc(head, body))


def plane_schedule(bits: int, planes_per_message: int | Sequence[int] = 1) -> tuple[int, ...]:
    """Planes in each plane message of a ``bits``-plane stream: ``planes_per_message``
    repeated (the last message holds the rest), or an explicit sequence of positive counts
    summing to ``bits``, returned as a tuple.

    Raises:
        ValueError: a count below 1, or counts that do not sum to ``bits``.
    """
    if isinstance(planes_per_message, int):
        if planes_per_message < 1:
            raise ValueError(f"planes_per_message must be ≥ 1 (got {planes_per_message})")
        return tuple(min(planes_per_message, bits - i) for i in range(0, bits, planes_per_message))
    counts = tuple(int(c) for c in planes_per_message)
    if not counts or any(c < 1 for c in counts) or sum(counts) != bits:
        raise ValueError(f"planes_per_message {counts} must be positive counts summing to bits = {bits}")
    return counts


@attrs.frozen(eq=False)
class ProgressiveStream:
    """The messages of one progressive stream, as :func:`encode_planes` returns them.

    Attributes:
        messages: message 0 (header and side information), then the plane messages.
        bits: B, the planes in the whole stream (the ``prog`` code width).
        plane_counts: planes carried by each plane message (``messages[1:]``), MSB first.
    """

    messages: tuple[bytes, ...]
    bits: int
    plane_counts: tuple[int, ...]

    @property
    def reachable(self) -> tuple[int, ...]:
        """Planes decodable after 1, 2, … messages: ``(0, c1, c1 + c2, …, bits)``."""
        out = [0]
        for c in self.plane_counts:
            out.append(out[-1] + c)
        return tuple(out)

    def messages_for(self, planes: int) -> int:
        """How many messages (header included) the receiver needs for at least ``planes``
        planes (0 … bits).

        Raises:
            ValueError: if ``planes`` is outside 0 … bits.
        """
        if not 0 <= planes <= self.bits:
            raise ValueError(f"planes must be 0..{self.bits} (got {planes})")
        return next(i + 1 for i, p in enumerate(self.reachable) if p >= planes)

    def prefix(self, planes: int) -> tuple[bytes, ...]:
        """The shortest prefix of messages that carries at least ``planes`` planes."""
        return self.messages[: self.messages_for(planes)]

    def bytes_for(self, planes: int) -> int:
        """Bytes on the wire of :meth:`prefix` (``len()`` of its messages, framing included)."""
        return sum(len(m) for m in self.prefix(planes))

    @property
    def total_bytes(self) -> int:
        """Bytes of the whole stream."""
        return sum(len(m) for m in self.messages)


def _check_prog(chain: Chain, bits: int | None, where: str) -> int:
    stage = chain.stages[0]
    if len(chain.stages) != 1 or stage.name != STAGE_NAME:
        raise CodecError(
            f"a progressive stream needs every chain to be one '{STAGE_NAME}' stage; {where} uses {chain.describe()!r}"
        )
    if bits is not None and stage.bits != bits:
        raise CodecError(f"a progressive stream needs one code width; {where} uses {stage.bits} bits, others {bits}")
    return stage.bits


def stream_bits(spec: Pipeline | str) -> int:
    """B, the code width of a progressive spec, checked without a cache: every rule's chain
    must be a single ``prog`` stage, all of one width.

    Raises:
        SpecError: a malformed spec string.
        CodecError: a chain that is not a single ``prog`` stage, or mixed widths.
    """
    bits = None
    for rule in as_pipeline(spec).rules:
        bits = _check_prog(rule.chain, bits, f"rule {rule.describe()!r}")
    assert bits is not None  # a parsed pipeline has at least one rule
    return bits


def encode_planes(
    cache: KVCache,
    spec: Pipeline | str = "prog8",
    *,
    planes_per_message: int | Sequence[int] = 1,
    **context: Any,
) -> ProgressiveStream:
    """Encode ``cache`` into a progressive stream of bit-plane messages.

    Args:
        cache: the sender's KV cache (any float dtype, any device).
        spec: a pipeline spec whose chains are all a single ``prog`` stage of one width B,
            e.g. ``"prog8"``, ``"k=prog8:axis=channel v=prog8"``, ``"prog6:group=32"``;
            cache stages (token selectors) may come first.
        planes_per_message: planes per plane message (the last may hold fewer), or an
            explicit schedule such as ``(3, 1, 1, 1, 1, 1)`` summing to B.
        context: extra inputs for cache stages (e.g. ``question_ids``).

    Returns:
        :class:`ProgressiveStream`: 1 + ``len(schedule)`` messages.

    Raises:
        SpecError: a malformed spec string.
        CodecError: a chain that is not a single ``prog`` stage, mixed code widths, a cache
            the stage or the format cannot carry (group size, non-finite values, limits).
        ValueError: a bad ``planes_per_message``.
    """
    pipeline = as_pipeline(spec)
    payload = encode_payload(cache, pipeline, **context)
    bits = None
    for i, layer in enumerate(payload.layers):
        for what, enc in (("keys", layer.keys), ("values", layer.values)):
            bits = _check_prog(payload.chains[enc.chain], bits, f"layer {i} {what}")
    assert bits is not None
    schedule = plane_schedule(bits, planes_per_message)
    wire._check_limits(payload)

    h = wire._Writer()
    h.u32(payload.batch)
    h.u16(len(payload.layers))
    h.u8(bits)
    h.u16(len(schedule))
    for count in schedule:
        h.u8(count)
    h.u8(len(payload.cache_stages))
    for stage in payload.cache_stages:
        h.stage(stage)
    h.u16(len(payload.chains))
    for chain in payload.chains:
        h.u8(len(chain.stages))
        for stage in chain.stages:
            h.stage(stage)
    for index, layer in enumerate(payload.layers):
        _write_geometry(h, index, layer)
        for enc in (layer.keys, layer.values):
            h.u16(enc.chain)
            (side,) = enc.sides
            h.u8(len(side))
            for name, t in side.items():
                h.str8(name)
                h.array(t)
    header_body = bytes(h.buf)
    stream_id = zlib.crc32(header_body)
    messages = [_message(KIND_HEADER, stream_id, 0, header_body)]

    codes = [enc.data.data.reshape(-1).to(torch.int32).cpu() for layer in payload.layers for enc in (layer.keys, layer.values)]
    first = 1
    for index, count in enumerate(schedule, 1):
        body = bytearray(struct.pack("<BB", first, count))
        for plane in range(first, first + count):
            shift = bits - plane
            for q in codes:
                body += bitpack.pack((q >> shift) & 1, 1)
        messages.append(_message(KIND_PLANES, stream_id, index, bytes(body)))
        first += count
    return ProgressiveStream(tuple(messages), bits, schedule)


def _write_geometry(s: wire._Writer, index: int, layer: wire.EncodedLayer) -> None:
    """The layer fields of wire-format §6.1 (offsets 0 … 22 + P of a section body)."""
    s.u16(index)
    s.u8(wire.LAYER_TYPE_CODES[layer.layer_type])
    s.u32(layer.sliding_window or 0)
    s.u32(layer.seen_tokens)
    s.u8(wire.DTYPE_CODES[layer.dtype])
    s.u16(layer.kv_heads)
    s.u32(layer.seq_len)
    s.u16(layer.head_dim_k)
    s.u16(layer.head_dim_v)
    if layer.positions is None:
        s.u8(wire.POS_CONTIGUOUS)
    else:
        s.u8(wire.POS_SHARED if layer.positions.dim() == 1 else wire.POS_PER_HEAD)
        s.buf += wire._tensor_bytes(layer.positions.to(torch.int32))


# ----------------------------------------------------------------------------- reading
@attrs.frozen(eq=False)
class _Tensor:
    stage: Stage  # the prog stage
    shape: tuple[int, int, int, int]
    side: dict[str, torch.Tensor]

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@attrs.frozen(eq=False)
class _Layer:
    layer_type: str
    sliding_window: int | None
    seen_tokens: int
    dtype: torch.dtype
    positions: torch.Tensor | None
    keys: _Tensor
    values: _Tensor


@attrs.frozen
class StreamInfo:
    """What a stream's header (message 0) declares.

    Attributes:
        stream_id: CRC-32 of the header body; every message of the stream carries it.
        batch, num_layers: cache geometry.
        bits: B, planes in the whole stream.
        plane_counts: planes in each plane message.
        cache_stages: spec text of the cache stages the sender applied.
        chains: spec text of the chain table.
        header_bytes: ``len()`` of message 0.
        plane_message_bytes: ``len()`` each plane message will have.
    """

    stream_id: int
    batch: int
    num_layers: int
    bits: int
    plane_counts: tuple[int, ...]
    cache_stages: tuple[str, ...]
    chains: tuple[str, ...]
    header_bytes: int
    plane_message_bytes: tuple[int, ...]


def _frame(message: bytes | bytearray | memoryview, what: str) -> tuple[int, int, int, int, memoryview]:
    """Check a message's framing; return (minor, kind, stream_id, index, body)."""
    buf = memoryview(message).cast("B")
    if len(buf) < OVERHEAD:
        raise DecodeError(f"truncated: {what} has {len(buf)} bytes, fewer than the {OVERHEAD}-byte framing")
    magic, major, minor, kind, _flags, stream_id, index, body_len = PREFIX.unpack(buf[: PREFIX.size])
    if magic != MAGIC:
        raise DecodeError(f"bad magic {bytes(magic)!r}: {what} is not a progressive kvcodec message (expected {MAGIC!r})")
    if major != MAJOR:
        raise DecodeError(f"unsupported progressive format version {major}.{minor} (this reader handles {MAJOR}.x)")
    end = PREFIX.size + body_len
    if end + CRC.size > len(buf):
        raise DecodeError(f"truncated: {what} announces a {body_len}-byte body, only {len(buf) - OVERHEAD} bytes follow")
    if end + CRC.size < len(buf):
        raise DecodeError(f"{what}: {len(buf) - end - CRC.size} trailing bytes after its checksum")
    (crc,) = CRC.unpack(buf[end:])
    if crc != _crc(buf[: PREFIX.size], buf[PREFIX.size : end]):
        raise DecodeError(f"checksum mismatch in {what}")
    if kind not in (KIND_HEADER, KIND_PLANES):
        raise DecodeError(f"{what}: unknown message kind {kind}")
    return minor, kind, stream_id, index, buf[PREFIX.size : end]


def _read_header(body: memoryview, minor: int, registry) -> tuple[int, int, tuple[int, ...], tuple, tuple, list[_Layer]]:
    r = wire._Reader(body, 0, len(body), "progressive header")
    batch = r.bounded("batch", r.u32("batch"), 1, wire.MAX_BATCH)
    num_layers = r.bounded("layer count", r.u16("layer count"), 1, wire.MAX_LAYERS)
    bits = r.bounded("bits", r.u8("bits"), 1, MAX_BITS)
    n_messages = r.bounded("plane message count", r.u16("plane message count"), 1, bits)
    counts = tuple(r.bounded("planes per message", r.u8("planes per message"), 1, bits) for _ in range(n_messages))
    if sum(counts) != bits:
        raise DecodeError(f"progressive header: plane messages carry {sum(counts)} planes, the stream has {bits}")
    cache_stages = tuple(
        wire._read_stage(r, registry, True)
        for _ in range(r.bounded("cache stages", r.u8("cache stages"), 0, wire.MAX_STAGES))
    )
    chains = []
    for _ in range(r.bounded("chain count", r.u16("chain count"), 1, 2 * num_layers)):
        n = r.bounded("chain length", r.u8("chain length"), 1, wire.MAX_STAGES)
        stages = [wire._read_stage(r, registry, False) for _ in range(n)]
        try:
            chain = Chain(stages)
        except ValueError as exc:
            raise DecodeError(f"progressive header: impossible chain: {exc}") from None
        try:
            _check_prog(chain, bits, f"chain {len(chains)}")
        except CodecError as exc:
            raise DecodeError(f"progressive header: {exc}") from None
        chains.append(chain)
    layers = []
    for index in range(num_layers):
        layers.append(_read_layer(r, index, batch, tuple(chains)))
        if layers[-1].dtype != layers[0].dtype:
            raise DecodeError(f"inconsistent geometry: layer {index} has dtype {layers[-1].dtype}, layer 0 has {layers[0].dtype}")
    if minor == MINOR and r.pos != r.end:
        raise DecodeError(f"progressive header: {r.end - r.pos} unexpected bytes after the last layer")
    # a newer minor version may append header fields: this reader skips them
    return batch, bits, counts, cache_stages, tuple(chains), layers


def _read_layer(r: wire._Reader, index: int, batch: int, chains: tuple[Chain, ...]) -> _Layer:
    where = f"progressive header, layer {index}"
    got = r.u16("layer index")
    if got != index:
        raise DecodeError(f"{where}: holds layer {got}, expected {index}")
    layer_type = wire.LAYER_TYPES_BY_CODE.get(r.u8("layer type"))
    if layer_type is None:
        raise DecodeError(f"{where}: unknown layer type code")
    window = r.u32("sliding window")
    seen = r.bounded("seen tokens", r.u32("seen tokens"), 1, wire.MAX_SEQ)
    dtype_code = r.u8("dtype")
    if dtype_code not in wire.CACHE_DTYPE_CODES:
        raise DecodeError(f"{where}: cache dtype code {dtype_code} is not float32, float16 or bfloat16")
    heads = r.bounded("kv_heads", r.u16("kv_heads"), 1, wire.MAX_HEADS)
    seq = r.bounded("seq_len", r.u32("seq_len"), 1, seen)
    dk = r.bounded("head_dim of keys", r.u16("head_dim"), 1, wire.MAX_HEAD_DIM)
    dv = r.bounded("head_dim of values", r.u16("head_dim"), 1, wire.MAX_HEAD_DIM)
    if layer_type == SLIDING_ATTENTION:
        r.bounded("sliding window", window, 1, wire.MAX_SEQ)
        if seq > window:
            raise DecodeError(f"{where}: {seq} stored tokens exceed the sliding window of {window}")
    elif window:
        raise DecodeError(f"{where}: a full-attention layer has a sliding window of {window}")
    mode = r.u8("positions mode")
    positions = None
    if mode in (wire.POS_SHARED, wire.POS_PER_HEAD):
        count = seq if mode == wire.POS_SHARED else heads * seq
        raw = r.take(4 * count, "positions")
        positions = torch.frombuffer(bytearray(raw), dtype=torch.int32).to(torch.int64)
        if mode == wire.POS_PER_HEAD:
            positions = positions.reshape(heads, seq)
        if bool((positions < 0).any()) or bool((positions >= seen).any()):
            raise DecodeError(f"{where}: token positions outside 0..{seen - 1}")
    elif mode != wire.POS_CONTIGUOUS:
        raise DecodeError(f"{where}: unknown positions mode {mode}")
    tensors = []
    for what, d in (("keys", dk), ("values", dv)):
        c = r.u16(f"{what} chain")
        if c >= len(chains):
            raise DecodeError(f"{where}: {what} use chain {c} but the header has {len(chains)}")
        side: dict[str, torch.Tensor] = {}
        for _ in range(r.bounded(f"{what} side arrays", r.u8("side count"), 0, wire.MAX_ARRAYS)):
            name = r.str8("side name")
            if name in side:
                raise DecodeError(f"{where}: {what} side information {name!r} appears twice")
            side[name] = r.array(f"{what} side {name!r}")
        if tuple(side) != SIDE_NAMES:
            raise DecodeError(f"{where}: {what} side information is {list(side)}, expected {list(SIDE_NAMES)}")
        stage = chains[c].stages[0]
        shape = (batch, heads, seq, d)
        stage.side_info(side, shape)  # validates dtype, shape, finiteness, range ≥ 0
        tensors.append(_Tensor(stage, shape, side))
    return _Layer(
        layer_type,
        window if layer_type == SLIDING_ATTENTION else None,
        seen,
        wire.CODE_DTYPES[dtype_code],
        positions,
        tensors[0],
        tensors[1],
    )


class ProgressiveDecoder:
    """The receiver's side of a progressive stream: feed messages in order, decode any time.

    ``feed`` verifies a message completely before it changes anything, so a rejected
    message (:class:`~kvcodec.errors.DecodeError`) leaves the decoder as it was and the
    receiver may ask for that message again.

    Attributes:
        planes: planes received so far (0 after the header).
        bits: planes in the whole stream (``None`` before the header).
        bytes_received: ``len()`` of the messages accepted so far.
    """

    def __init__(self, *, registry=None):
        from kvcodec.plugins import get_registry

        self._registry = registry or get_registry()
        self._stream_id: int | None = None
        self._layers: list[_Layer] = []
        self._codes: list[torch.Tensor] = []  # int32, flat, one per tensor (keys, values per layer)
        self._counts: tuple[int, ...] = ()
        self._cache_stages: tuple = ()
        self._chains: tuple = ()
        self.bits: int | None = None
        self.planes = 0
        self.messages = 0
        self.bytes_received = 0
        self._header_bytes = 0

    @property
    def complete(self) -> bool:
        """All planes have arrived."""
        return self.bits is not None and self.planes == self.bits

    @property
    def info(self) -> StreamInfo:
        """What the header declared.

        Raises:
            DecodeError: before the header has been fed.
        """
        if self.bits is None:
            raise DecodeError("no header received yet")
        sizes = tuple(OVERHEAD + 2 + c * sum(bitpack.packed_size(t.count, 1) for t in self._tensors()) for c in self._counts)
        return StreamInfo(
            self._stream_id, self._layers[0].keys.shape[0], len(self._layers), self.bits, self._counts,
            tuple(s.describe() for s in self._cache_stages), tuple(c.describe() for c in self._chains),
            self._header_bytes, sizes,
        )

    def _tensors(self) -> list[_Tensor]:
        return [t for layer in self._layers for t in (layer.keys, layer.values)]

    def feed(self, message: bytes | bytearray | memoryview) -> int:
        """Accept the next message of the stream; return the planes received so far.

        Raises:
            DecodeError: truncated, bad magic, unsupported version, checksum mismatch,
                a message of another stream, out of order or repeated, a message after
                the last one, a body inconsistent with the header (message says which).
        """
        what = f"message {self.messages}"
        minor, kind, stream_id, index, body = _frame(message, what)
        if self.bits is None:
            if kind != KIND_HEADER or index != 0:
                raise DecodeError(f"out of order: the stream must start with its header (message 0), got message {index}")
            if stream_id != zlib.crc32(body):
                raise DecodeError("header: stream id is not the CRC-32 of the header body")
            _batch, bits, counts, cache_stages, chains, layers = _read_header(body, minor, self._registry)
            self._stream_id, self.bits, self._counts = stream_id, bits, counts
            self._cache_stages, self._chains, self._layers = cache_stages, chains, layers
            self._codes = [torch.zeros(t.count, dtype=torch.int32) for t in self._tensors()]
            self._header_bytes = len(memoryview(message).cast("B"))
        else:
            if stream_id != self._stream_id:
                raise DecodeError(f"{what}: belongs to stream {stream_id:#010x}, not {self._stream_id:#010x}")
            if kind != KIND_PLANES:
                raise DecodeError(f"out of order: {what} is a header, expected plane message {self.messages}")
            if self.complete:
                raise DecodeError(f"the stream is complete ({self.bits} planes); message {index} is one too many")
            if index != self.messages:
                raise DecodeError(f"out of order: got message {index}, expected message {self.messages}")
            count = self._counts[index - 1]
            tensors = self._tensors()
            per_plane = [bitpack.packed_size(t.count, 1) for t in tensors]
            need = 2 + count * sum(per_plane)
            if len(body) != need:
                raise DecodeError(f"inconsistent geometry: {what} has a {len(body)}-byte body, the header implies {need}")
            first, got = body[0], body[1]
            if first != self.planes + 1 or got != count:
                raise DecodeError(
                    f"out of order: {what} holds planes {first}..{first + got - 1},"
                    f" expected {self.planes + 1}..{self.planes + count}"
                )
            codes = [q.clone() for q in self._codes]
            pos = 2
            for _ in range(count):
                for i, (t, n) in enumerate(zip(tensors, per_plane)):
                    bit = bitpack.unpack(body[pos : pos + n], t.count, 1).to(torch.int32)
                    codes[i] = (codes[i] << 1) | bit
                    pos += n
            self._codes = codes
            self.planes += count
        self.messages += 1
        self.bytes_received += len(memoryview(message).cast("B"))
        return self.planes

    def cache(self, device: torch.device | str | None = None) -> KVCache:
        """The cache the planes received so far decode to (``planes``-bit mid-rise
        reconstruction; group midpoints after the header alone), in the dtype it was sent,
        on ``device`` (default CPU).

        Raises:
            DecodeError: before the header, or if a stage rejects the data.
        """
        if self.bits is None:
            raise DecodeError("no header received yet: nothing to decode")
        layers = []
        codes = iter(self._codes)
        for layer in self._layers:
            out = []
            for t in (layer.keys, layer.values):
                q = next(codes).reshape(t.shape)
                x = t.stage.decode_prefix(q, self.planes, t.side)
                out.append(_saturating_cast(x, layer.dtype))
            keys, values = out
            if device is not None:
                keys, values = keys.to(device), values.to(device)
            kw = dict(layer_type=layer.layer_type, sliding_window=layer.sliding_window)
            if layer.positions is None:
                layers.append(LayerKV.contiguous(keys, values, layer.seen_tokens, **kw))
            else:
                layers.append(LayerKV(keys, values, layer.positions.to(keys.device), layer.seen_tokens, **kw))
        return KVCache(layers)


def decode_planes(
    messages: Sequence[bytes | bytearray | memoryview],
    *,
    device: torch.device | str | None = None,
    registry=None,
) -> KVCache:
    """Decode a prefix of a stream (message 0 first, then plane messages in order).

    After ``k`` planes every element is its group's ``k``-bit mid-rise reconstruction
    ``min + (q_k + 0.5) · range / 2^k`` (``q_k`` the top ``k`` bits of its code); after the
    header alone, its group's midpoint. The cache has the geometry, positions and dtype it
    was sent with.

    Raises:
        DecodeError: no messages, or any message rejected by :meth:`ProgressiveDecoder.feed`.
    """
    if len(messages) == 0:
        raise DecodeError("no messages: a progressive stream starts with its header")
    dec = ProgressiveDecoder(registry=registry)
    for m in messages:
        dec.feed(m)
    return dec.cache(device)


def stream_info(header: bytes | bytearray | memoryview, registry=None) -> StreamInfo:
    """Parse and verify message 0 alone.

    Raises:
        DecodeError: as :meth:`ProgressiveDecoder.feed`.
    """
    dec = ProgressiveDecoder(registry=registry)
    dec.feed(header)
    return dec.info
