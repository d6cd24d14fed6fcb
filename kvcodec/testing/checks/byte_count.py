"""Check ``byte_count``: the bytes counted are the bytes sent (``specs/wire-format.md`` §10)."""

from __future__ import annotations

import torch

from kvcodec import bitpack, wire
from kvcodec.cache import KVCache
from kvcodec.chain import Chain
from kvcodec.codec import Form, Stage

from ..subject import Subject
from ._common import _encode_payload, _fail
from .forms import _check_code_range


def _param_bytes(stage: Stage) -> int:
    size = 1 + len(stage.name.encode()) + 2 + 1
    types = stage.param_types()
    for key, value in stage.params().items():
        typ = types[key]
        v = 1 if typ is bool else 8 if typ in (int, float) else 2 + len(str(value).encode())
        size += 1 + len(key.encode()) + 1 + v
    return size


def _array_bytes(t: torch.Tensor) -> int:
    return 2 + 4 * t.dim() + t.numel() * t.element_size()


def _block_bytes(block: wire.EncodedTensor, chain: Chain) -> int:
    size = 2
    for side in block.sides:
        size += 1 + sum(1 + len(name.encode()) + _array_bytes(t) for name, t in side.items())
    size += 1
    data = block.data
    if chain.output is Form.FLOAT:
        size += _array_bytes(data)
    elif chain.output is Form.CODES:
        size += 2 + 4 * data.data.dim() + bitpack.packed_size(data.data.numel(), data.bits)
    else:
        size += 4 + len(data)
    return size


def predict_size(payload: wire.Payload) -> tuple[int, list[int]]:
    """(header bytes, [section bytes per layer]) of ``payload`` as ``specs/wire-format.md``
    §10 predicts them from what the codecs returned: side arrays, data, code widths."""
    header_len = 4 + 2 + 1 + sum(_param_bytes(s) for s in payload.cache_stages) + 2
    header_len += sum(1 + sum(_param_bytes(s) for s in chain.stages) for chain in payload.chains)
    sections = []
    for layer in payload.layers:
        p = 0 if layer.positions is None else 4 * layer.positions.numel()
        body = 23 + p + _block_bytes(layer.keys, payload.chains[layer.keys.chain])
        body += _block_bytes(layer.values, payload.chains[layer.values.chain])
        sections.append(8 + body)
    return 12 + header_len + 4, sections


def check_byte_count(subject: Subject, cache: KVCache) -> None:
    """The bytes counted are the bytes sent: ``len(kvcodec.encode(…))`` equals
    ``inspect``'s total, which equals its header bytes plus every layer's section bytes;
    each of these equals the size predicted (wire-format §10) from the side arrays, data
    and code widths the codecs returned; and the codes sent fit the width they report."""
    c = "byte_count"
    payload = _encode_payload(subject, cache)
    for i, layer in enumerate(payload.layers):
        for what, block in (("keys", layer.keys), ("values", layer.values)):
            if payload.chains[block.chain].output is Form.CODES:
                _check_code_range(c, subject, payload.chains[block.chain].stages[-1], block.data)
    data = wire.dump(payload)
    from kvcodec import api

    info = api.inspect(data, subject.registry)
    n = len(data)
    if info.total_bytes != n:
        raise _fail(c, subject, f"inspect reports {info.total_bytes} bytes for a payload of {n}")
    layers = [l.wire_bytes for l in info.layers]
    if info.header_bytes + sum(layers) != n:
        raise _fail(c, subject, f"header {info.header_bytes} + sections {layers} ≠ {n} bytes")
    header, sections = predict_size(payload)
    if (header, sections) != (info.header_bytes, layers):
        raise _fail(
            c,
            subject,
            f"predicted header {header} and sections {sections} from what the codecs returned;"
            f" the payload has {info.header_bytes} and {layers}",
        )
