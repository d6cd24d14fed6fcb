"""Wire format v1: an encoded KV cache ↔ bytes. Specified in ``specs/wire-format.md``.

Layout (little-endian)::

    preamble   magic "KVCD" · major u8 · minor u8 · flags u16 · header_len u32
    header     header_len bytes: batch, layer count, cache stages, chain table
    header_crc u32   CRC-32 of preamble + header
    section*   one per layer: section_len u32 · body · section_crc u32

Decoding treats the bytes as untrusted: no pickle, no eval; every length is checked
against the real buffer and against the limits below before anything is allocated; any
problem raises :class:`~kvcodec.errors.DecodeError` saying what is wrong.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from typing import Any, Union

import attrs
import torch

from kvcodec import bitpack
from kvcodec.cache import FULL_ATTENTION, SLIDING_ATTENTION
from kvcodec.chain import Chain
from kvcodec.codec import CacheStage, Codes, Form, Side, Stage
from kvcodec.errors import CodecError, DecodeError

MAGIC = b"KVCD"
MAJOR, MINOR = 1, 0
PREAMBLE = struct.Struct("<4sBBHI")

# dtype codes (wire-format.md §3)
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.float64: 4,
    torch.uint8: 5,
    torch.int8: 6,
    torch.int16: 7,
    torch.int32: 8,
    torch.int64: 9,
    torch.bool: 10,
}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
CACHE_DTYPE_CODES = (1, 2, 3)
LAYER_TYPE_CODES = {FULL_ATTENTION: 0, SLIDING_ATTENTION: 1}
LAYER_TYPES_BY_CODE = {v: k for k, v in LAYER_TYPE_CODES.items()}
FORM_CODES = {Form.FLOAT: 1, Form.CODES: 2, Form.BYTES: 3}
POS_CONTIGUOUS, POS_SHARED, POS_PER_HEAD = 0, 1, 2

# sane limits a reader enforces before allocating (wire-format.md §7)
MAX_LAYERS = 4096
MAX_BATCH = 65536
MAX_HEADS = 1024
MAX_SEQ = 1 << 24
MAX_HEAD_DIM = 65535
MAX_STAGES = 32
MAX_ARRAYS = 64
MAX_NDIM = 8
MAX_DIM = 1 << 31
MAX_ELEMENTS = 1 << 40  # product of the dimensions, zeros counted as 1 (an empty array's shape must stay sane)


@attrs.frozen(eq=False)
class EncodedTensor:
    """One layer's keys or values after their chain: chain index, per-stage side info, data."""

    chain: int
    sides: tuple[Side, ...]
    data: Union[torch.Tensor, Codes, bytes]


@attrs.frozen(eq=False)
class EncodedLayer:
    """One layer's geometry, positions and encoded keys/values (one wire section)."""

    layer_type: str
    sliding_window: int | None
    seen_tokens: int
    dtype: torch.dtype
    kv_heads: int
    seq_len: int
    head_dim_k: int
    head_dim_v: int
    positions: torch.Tensor | None  # None: contiguous (the last seq_len of seen_tokens)
    keys: EncodedTensor
    values: EncodedTensor
    wire_bytes: int = 0  # size of this section on the wire, set by load()


@attrs.frozen(eq=False)
class Payload:
    """Everything a payload holds, before the chains are undone."""

    batch: int
    chains: tuple[Chain, ...]
    cache_stages: tuple[CacheStage, ...]
    layers: tuple[EncodedLayer, ...]
    version: tuple[int, int] = (MAJOR, MINOR)
    header_bytes: int = 0  # preamble + header + header CRC, set by load()


def _crc(*parts: bytes | memoryview) -> int:
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    return crc


def _tensor_bytes(t: torch.Tensor) -> bytes:
    if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
        raise NotImplementedError("kvcodec's wire format is written on little-endian hosts only")
    t = t.detach().contiguous().cpu()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


# ----------------------------------------------------------------------------- writing
class _Writer:
    def __init__(self) -> None:
        self.buf = bytearray()

    def u8(self, v: int) -> None:
        self.buf += struct.pack("<B", v)

    def u16(self, v: int) -> None:
        self.buf += struct.pack("<H", v)

    def u32(self, v: int) -> None:
        self.buf += struct.pack("<I", v)

    def i64(self, v: int) -> None:
        self.buf += struct.pack("<q", v)

    def f64(self, v: float) -> None:
        self.buf += struct.pack("<d", v)

    def str8(self, s: str) -> None:
        b = s.encode("utf-8")
        if len(b) > 255:
            raise ValueError(f"string too long for the wire (max 255 bytes): {s[:40]!r}…")
        self.u8(len(b))
        self.buf += b

    def str16(self, s: str) -> None:
        b = s.encode("utf-8")
        if len(b) > 65535:
            raise ValueError("string parameter too long for the wire (max 65535 bytes)")
        self.u16(len(b))
        self.buf += b

    def dims(self, shape) -> None:
        if len(shape) > MAX_NDIM:
            raise ValueError(f"arrays of more than {MAX_NDIM} dimensions cannot be sent")
        if any(d > MAX_DIM for d in shape) or math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
            raise ValueError(f"an array of shape {tuple(shape)} exceeds the wire format's size limits")
        self.u8(len(shape))
        for d in shape:
            self.u32(d)

    def array(self, t: torch.Tensor) -> None:
        if t.dtype not in DTYPE_CODES:
            raise ValueError(f"side information of dtype {t.dtype} cannot be sent")
        self.u8(DTYPE_CODES[t.dtype])
        self.dims(tuple(t.shape))
        self.buf += _tensor_bytes(t)

    def stage(self, stage: Stage) -> None:
        self.str8(stage.name)
        self.u16(stage.version)
        params, types = stage.params(), stage.param_types()
        self.u8(len(params))
        for key, value in params.items():
            self.str8(key)
            typ = types[key]  # the declared type decides the tag, not the value's
            if typ is bool:
                self.buf += b"b"
                self.u8(int(bool(value)))
            elif typ is int:
                self.buf += b"i"
                self.i64(int(value))
            elif typ is float:
                self.buf += b"f"
                self.f64(float(value))
            else:
                self.buf += b"s"
                self.str16(str(value))

    def tensor_block(self, enc: EncodedTensor, chain: Chain) -> None:
        self.u16(enc.chain)
        if len(enc.sides) != len(chain.stages):
            raise ValueError("one side-info dict per stage is required")
        for side in enc.sides:
            if len(side) > MAX_ARRAYS:
                raise ValueError(f"a stage may send at most {MAX_ARRAYS} side-information arrays")
            self.u8(len(side))
            for name, t in side.items():
                self.str8(name)
                self.array(t)
        form = chain.output
        self.u8(FORM_CODES[form])
        if form is Form.FLOAT:
            self.array(enc.data)
        elif form is Form.CODES:
            self.u8(enc.data.bits)
            self.dims(tuple(enc.data.data.shape))
            self.buf += bitpack.pack(enc.data.data, enc.data.bits)
        else:
            self.u32(len(enc.data))
            self.buf += bytes(enc.data)


def _increasing(positions: torch.Tensor) -> bool:
    """True when every row of ``positions`` (``[T]`` or ``[H, T]``) is strictly increasing."""
    return positions.shape[-1] < 2 or bool((positions[..., 1:] > positions[..., :-1]).all())


def _check_limits(payload: Payload) -> None:
    """A writer MUST NOT produce what a reader rejects (wire-format.md §6.2, §7)."""

    def within(what: str, value: int, lo: int, hi: int) -> None:
        if not lo <= value <= hi:
            raise CodecError(f"cannot be sent in wire format v1: {what} = {value} is outside {lo}..{hi}")

    within("batch", payload.batch, 1, MAX_BATCH)
    within("layer count", len(payload.layers), 1, MAX_LAYERS)
    within("cache stages", len(payload.cache_stages), 0, MAX_STAGES)
    within("chain count", len(payload.chains), 1, 2 * len(payload.layers))
    for chain in payload.chains:
        within("chain length", len(chain.stages), 1, MAX_STAGES)
    for i, layer in enumerate(payload.layers):
        within(f"layer {i} seen tokens", layer.seen_tokens, 1, MAX_SEQ)
        within(f"layer {i} seq_len", layer.seq_len, 1, layer.seen_tokens)
        within(f"layer {i} kv_heads", layer.kv_heads, 1, MAX_HEADS)
        within(f"layer {i} head_dim of keys", layer.head_dim_k, 1, MAX_HEAD_DIM)
        within(f"layer {i} head_dim of values", layer.head_dim_v, 1, MAX_HEAD_DIM)
        if layer.layer_type == SLIDING_ATTENTION:
            within(f"layer {i} sliding window", layer.sliding_window or 0, 1, MAX_SEQ)
            within(f"layer {i} seq_len", layer.seq_len, 1, layer.sliding_window)
        if layer.positions is not None:
            p = layer.positions
            if p.shape not in ((layer.seq_len,), (layer.kv_heads, layer.seq_len)):
                raise CodecError(f"cannot be sent: layer {i} positions have shape {tuple(p.shape)}")
            if p.numel() and (int(p.min()) < 0 or int(p.max()) >= layer.seen_tokens):
                raise CodecError(f"cannot be sent: layer {i} has token positions outside 0..{layer.seen_tokens - 1}")
            if not _increasing(p):
                raise CodecError(
                    f"cannot be sent: layer {i} token positions are not strictly increasing (sorted, distinct) within each head"
                )


def dump(payload: Payload) -> bytes:
    """Serialize a :class:`Payload` to wire format v1 bytes.

    Raises:
        ValueError: if something does not fit the format (string or array limits);
            :class:`~kvcodec.errors.CodecError` (a ValueError) for a layer or cache
            beyond the limits of wire-format.md §7.
    """
    _check_limits(payload)
    h = _Writer()
    h.u32(payload.batch)
    h.u16(len(payload.layers))
    h.u8(len(payload.cache_stages))
    for stage in payload.cache_stages:
        h.stage(stage)
    h.u16(len(payload.chains))
    for chain in payload.chains:
        h.u8(len(chain.stages))
        for stage in chain.stages:
            h.stage(stage)
    pre = PREAMBLE.pack(MAGIC, MAJOR, MINOR, 0, len(h.buf))
    out = bytearray(pre) + h.buf
    out += struct.pack("<I", _crc(pre, h.buf))
    for index, layer in enumerate(payload.layers):
        s = _Writer()
        s.u16(index)
        s.u8(LAYER_TYPE_CODES[layer.layer_type])
        s.u32(layer.sliding_window or 0)
        s.u32(layer.seen_tokens)
        s.u8(DTYPE_CODES[layer.dtype])
        s.u16(layer.kv_heads)
        s.u32(layer.seq_len)
        s.u16(layer.head_dim_k)
        s.u16(layer.head_dim_v)
        if layer.positions is None:
            s.u8(POS_CONTIGUOUS)
        else:
            s.u8(POS_SHARED if layer.positions.dim() == 1 else POS_PER_HEAD)
            s.buf += _tensor_bytes(layer.positions.to(torch.int32))
        s.tensor_block(layer.keys, payload.chains[layer.keys.chain])
        s.tensor_block(layer.values, payload.chains[layer.values.chain])
        length = struct.pack("<I", len(s.buf))
        out += length + s.buf + struct.pack("<I", _crc(length, s.buf))
    return bytes(out)


# ----------------------------------------------------------------------------- reading
class _Reader:
    def __init__(self, buf: memoryview, pos: int, end: int, where: str):
        self.buf, self.pos, self.end, self.where = buf, pos, end, where

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            raise DecodeError(
                f"truncated: {self.where} needs {n} bytes for {what} at offset {self.pos},"
                f" only {self.end - self.pos} left"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def str8(self, what: str) -> str:
        raw = self.take(self.u8(what), what)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(f"{self.where}: {what} is not valid UTF-8") from None

    def bounded(self, what: str, value: int, lo: int, hi: int) -> int:
        if not lo <= value <= hi:
            raise DecodeError(f"{self.where}: {what} = {value} is outside {lo}..{hi}")
        return value

    def dims(self, what: str) -> tuple[int, ...]:
        ndim = self.bounded(f"{what} ndim", self.u8(what), 0, MAX_NDIM)
        shape = tuple(self.bounded(f"{what} dimension", self.u32(what), 0, MAX_DIM) for _ in range(ndim))
        # an empty array (a zero dimension) needs no bytes, but torch cannot even describe
        # shapes like (0, 2^31, 2^31, 2^31): its strides overflow
        if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
            raise DecodeError(f"{self.where}: {what} shape {shape} is too large")
        return shape

    def array(self, what: str) -> torch.Tensor:
        code = self.u8(what)
        if code not in CODE_DTYPES:
            raise DecodeError(f"{self.where}: {what} has unknown dtype code {code}")
        dtype = CODE_DTYPES[code]
        shape = self.dims(what)
        itemsize = torch.empty((), dtype=dtype).element_size()
        raw = self.take(math.prod(shape) * itemsize, what)  # checked against the buffer first
        if not raw.nbytes:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)


def _read_stage(r: _Reader, registry, cache_stage: bool) -> Stage:
    name = r.str8("codec name")
    version = r.u16("codec version")
    count = r.u8("parameter count")
    params: dict[str, Any] = {}
    for _ in range(count):
        key = r.str8("parameter name")
        tag = bytes(r.take(1, "parameter type"))
        if tag == b"b":
            value: Any = bool(r.bounded(f"{name}.{key}", r.u8("bool"), 0, 1))
        elif tag == b"i":
            value = struct.unpack("<q", r.take(8, "int parameter"))[0]
        elif tag == b"f":
            value = struct.unpack("<d", r.take(8, "float parameter"))[0]
        elif tag == b"s":
            raw = r.take(r.u16("string length"), "string parameter")
            try:
                value = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError(f"header: parameter {name}.{key} is not valid UTF-8") from None
        else:
            raise DecodeError(f"header: parameter {name}.{key} has unknown type tag {tag!r}")
        if key in params:
            raise DecodeError(f"header: parameter {name}.{key} appears twice")
        params[key] = value
    info = registry.get(name)
    if info is None:
        raise DecodeError(f"unknown codec {name!r} (is the plugin that provides it installed?)")
    cls = info.cls
    if version > cls.version:
        raise DecodeError(
            f"codec {name!r} version {version} is newer than the installed version {cls.version}; upgrade {info.provider}"
        )
    if cache_stage != issubclass(cls, CacheStage):
        raise DecodeError(f"header: codec {name!r} is in the wrong list (cache stages vs chains)")
    types = cls.param_types()
    for key, value in params.items():
        want = types.get(key)
        if want is None:
            raise DecodeError(f"header: codec {name!r} has no parameter {key!r}")
        if type(value) is not want:
            raise DecodeError(f"header: parameter {name}.{key} must be {want.__name__}, got {type(value).__name__}")
    try:
        return cls.from_params(params, version)
    except (TypeError, ValueError) as exc:
        message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        raise DecodeError(f"header: invalid parameters for codec {name!r}: {message}") from None


@attrs.frozen
class Header:
    """The parsed header: batch, layer count, cache stages and chain table."""

    batch: int
    num_layers: int
    cache_stages: tuple[CacheStage, ...]
    chains: tuple[Chain, ...]
    version: tuple[int, int]
    size: int  # bytes: preamble + header + CRC


def load_header(data: bytes | bytearray | memoryview, registry=None) -> Header:
    """Parse and check the preamble and header of a payload.

    Raises:
        DecodeError: bad magic, unsupported version, truncated, checksum mismatch, unknown
            codec, invalid parameters.
    """
    from kvcodec.plugins import get_registry

    registry = registry or get_registry()
    buf = memoryview(bytes(data) if not isinstance(data, (bytes, memoryview)) else data).cast("B")
    if len(buf) < PREAMBLE.size:
        raise DecodeError(f"truncated: {len(buf)} bytes is shorter than the {PREAMBLE.size}-byte preamble")
    magic, major, minor, _flags, header_len = PREAMBLE.unpack(buf[: PREAMBLE.size])
    if magic != MAGIC:
        raise DecodeError(f"bad magic {bytes(magic)!r}: not a kvcodec payload (expected {MAGIC!r})")
    if major != MAJOR:
        raise DecodeError(f"unsupported wire format version {major}.{minor} (this reader handles {MAJOR}.x)")
    end = PREAMBLE.size + header_len
    if end + 4 > len(buf):
        raise DecodeError(f"truncated: header of {header_len} bytes and its CRC do not fit in {len(buf)} bytes")
    (crc,) = struct.unpack("<I", buf[end : end + 4])
    if crc != _crc(buf[:PREAMBLE.size], buf[PREAMBLE.size : end]):
        raise DecodeError("checksum mismatch in the header")
    r = _Reader(buf, PREAMBLE.size, end, "header")
    batch = r.bounded("batch", r.u32("batch"), 1, MAX_BATCH)
    num_layers = r.bounded("layer count", r.u16("layer count"), 1, MAX_LAYERS)
    cache_stages = tuple(
        _read_stage(r, registry, True) for _ in range(r.bounded("cache stages", r.u8("cache stages"), 0, MAX_STAGES))
    )
    chains = []
    for _ in range(r.bounded("chain count", r.u16("chain count"), 1, 2 * num_layers)):
        n = r.bounded("chain length", r.u8("chain length"), 1, MAX_STAGES)
        stages = [_read_stage(r, registry, False) for _ in range(n)]
        try:
            chains.append(Chain(stages))
        except ValueError as exc:
            raise DecodeError(f"header: impossible chain: {exc}") from None
    if minor == MINOR and r.pos != end:
        raise DecodeError(f"header: {end - r.pos} unexpected bytes after the chain table")
    # a newer minor version may append header fields: a 1.0 reader skips them (compatibility rule)
    return Header(batch, num_layers, cache_stages, tuple(chains), (major, minor), end + 4)


def _read_block(r: _Reader, chains: tuple[Chain, ...], what: str) -> EncodedTensor:
    index = r.u16(f"{what} chain")
    if index >= len(chains):
        raise DecodeError(f"{r.where}: {what} uses chain {index} but the header has {len(chains)}")
    chain = chains[index]
    sides = []
    for stage in chain.stages:
        side: dict[str, torch.Tensor] = {}
        for _ in range(r.bounded(f"{what} side arrays", r.u8("side count"), 0, MAX_ARRAYS)):
            name = r.str8("side name")
            if name in side:
                raise DecodeError(f"{r.where}: {what} side information {name!r} of {stage.name!r} appears twice")
            side[name] = r.array(f"{what} side {name!r}")
        sides.append(side)
    form = r.u8(f"{what} form")
    if form != FORM_CODES[chain.output]:
        raise DecodeError(f"{r.where}: {what} data form {form} does not match chain {chain} (→ {chain.output.value})")
    data: Any
    if chain.output is Form.FLOAT:
        data = r.array(f"{what} data")
        if not data.is_floating_point():
            raise DecodeError(f"{r.where}: {what} float data has dtype {data.dtype}")
    elif chain.output is Form.CODES:
        bits = r.bounded(f"{what} code width", r.u8("bits"), 1, 16)
        shape = r.dims(f"{what} codes")
        count = math.prod(shape)
        packed = r.take(bitpack.packed_size(count, bits), f"{what} packed codes")
        data = Codes(bitpack.unpack(packed, count, bits).reshape(shape), bits)
    else:
        data = bytes(r.take(r.u32(f"{what} byte count"), f"{what} bytes"))
    return EncodedTensor(index, tuple(sides), data)


def load(data: bytes | bytearray | memoryview, registry=None) -> Payload:
    """Parse and check a whole payload (header and every section).

    Raises:
        DecodeError: truncated, bad magic, unsupported version, unknown codec, checksum
            mismatch, inconsistent geometry, out-of-range length, trailing bytes.
    """
    buf = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    header = load_header(buf, registry)
    pos, layers = header.size, []
    for index in range(header.num_layers):
        where = f"layer {index} section"
        if pos + 4 > len(buf):
            raise DecodeError(f"truncated: {where} is missing ({header.num_layers} layers announced)")
        (length,) = struct.unpack("<I", buf[pos : pos + 4])
        end = pos + 4 + length
        if end + 4 > len(buf):
            raise DecodeError(f"truncated: {where} announces {length} bytes, only {len(buf) - pos - 8} left")
        (crc,) = struct.unpack("<I", buf[end : end + 4])
        if crc != _crc(buf[pos : pos + 4], buf[pos + 4 : end]):
            raise DecodeError(f"checksum mismatch in {where}")
        r = _Reader(buf, pos + 4, end, where)
        layers.append(_read_layer(r, index, header))
        if layers[-1].dtype != layers[0].dtype:
            raise DecodeError(
                f"inconsistent geometry: {where} has dtype {layers[-1].dtype}, layer 0 has {layers[0].dtype}"
            )
        if r.pos != end:
            raise DecodeError(f"{where}: {end - r.pos} unexpected bytes at its end")
        layers[-1] = attrs.evolve(layers[-1], wire_bytes=end + 4 - pos)
        pos = end + 4
    if pos != len(buf):
        raise DecodeError(f"{len(buf) - pos} trailing bytes after the last section")
    return Payload(header.batch, header.chains, header.cache_stages, tuple(layers), header.version, header.size)


def _read_layer(r: _Reader, index: int, header: Header) -> EncodedLayer:
    got = r.u16("layer index")
    if got != index:
        raise DecodeError(f"{r.where}: holds layer {got}, expected {index}")
    type_code = r.u8("layer type")
    layer_type = LAYER_TYPES_BY_CODE.get(type_code)
    if layer_type is None:
        raise DecodeError(f"{r.where}: unknown layer type code {type_code}")
    window = r.u32("sliding window")
    seen = r.bounded("seen tokens", r.u32("seen tokens"), 1, MAX_SEQ)
    dtype_code = r.u8("dtype")
    if dtype_code not in CACHE_DTYPE_CODES:
        raise DecodeError(f"{r.where}: cache dtype code {dtype_code} is not float32, float16 or bfloat16")
    heads = r.bounded("kv_heads", r.u16("kv_heads"), 1, MAX_HEADS)
    seq = r.bounded("seq_len", r.u32("seq_len"), 1, seen)
    dk = r.bounded("head_dim of keys", r.u16("head_dim"), 1, MAX_HEAD_DIM)
    dv = r.bounded("head_dim of values", r.u16("head_dim"), 1, MAX_HEAD_DIM)
    if layer_type == SLIDING_ATTENTION:
        r.bounded("sliding window", window, 1, MAX_SEQ)
        if seq > window:
            raise DecodeError(f"{r.where}: {seq} stored tokens exceed the sliding window of {window}")
    elif window:
        raise DecodeError(f"{r.where}: a full-attention layer has a sliding window of {window}")
    mode = r.u8("positions mode")
    positions = None
    if mode in (POS_SHARED, POS_PER_HEAD):
        count = seq if mode == POS_SHARED else heads * seq
        raw = r.take(4 * count, "positions")
        positions = torch.frombuffer(bytearray(raw), dtype=torch.int32).to(torch.int64)
        if mode == POS_PER_HEAD:
            positions = positions.reshape(heads, seq)
        if bool((positions < 0).any()) or bool((positions >= seen).any()):
            raise DecodeError(f"{r.where}: token positions outside 0..{seen - 1}")
        if not _increasing(positions):
            raise DecodeError(f"{r.where}: token positions are not strictly increasing (sorted, distinct) within each head")
    elif mode != POS_CONTIGUOUS:
        raise DecodeError(f"{r.where}: unknown positions mode {mode}")
    keys = _read_block(r, header.chains, "keys")
    values = _read_block(r, header.chains, "values")
    return EncodedLayer(
        layer_type,
        window if layer_type == SLIDING_ATTENTION else None,
        seen,
        CODE_DTYPES[dtype_code],
        heads,
        seq,
        dk,
        dv,
        positions,
        keys,
        values,
    )
