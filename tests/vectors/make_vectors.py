"""Build the committed wire-format test vectors (run by hand; ``tests/test_vectors.py`` checks them).

    python tests/vectors/make_vectors.py          # rewrites tests/vectors/*.kvc and *.json

For every vector NAME it writes

- ``NAME.kvc``: the payload bytes ``kvcodec.encode(cache, spec)``;
- ``NAME.json``: the spec, the input cache, the expected decoded cache, the payload's
  length, sha256 and section sizes (taken from the bytes by the small walker below, not
  from kvcodec).

Tensors are written as flat lists (C order) of Python floats; ``json`` writes floats with
``repr``, the shortest text that reads back to the same double, so every float32 /
bfloat16 value is exact. No pickle, no ``torch.save``.

The caches are built from an integer generator (a 64-bit LCG), not from torch's RNG, so
the inputs do not depend on the torch version. Regenerating the vectors is only right when
the wire format or a codec's arithmetic changes on purpose (and then the codec's
``version`` or the format version must change too): the test exists to catch any
unintended change.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import sys
from pathlib import Path

import torch

import kvcodec
from kvcodec import KVCache, LayerKV

HERE = Path(__file__).resolve().parent
B, H, T, D = 1, 2, 6, 4


def lcg_values(seed: int, n: int, amp_pow2: int = 1) -> list[float]:
    """``n`` deterministic floats in [-2^amp_pow2, 2^amp_pow2), each exact in float32
    (a 24-bit integer times a power of two)."""
    state, out = seed, []
    for _ in range(n):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        u = state >> 40  # 24 bits
        out.append((u - 2**23) * 2.0 ** (amp_pow2 - 23))
    return out


def tensor(seed: int, dtype: torch.dtype, outlier_channel: int | None = None) -> torch.Tensor:
    x = torch.tensor(lcg_values(seed, B * H * T * D), dtype=torch.float64).reshape(B, H, T, D)
    if outlier_channel is not None:  # keys: one channel 8× larger (the KIVI observation)
        x[..., outlier_channel] *= 8
    return x.to(dtype)


def cache_f32() -> KVCache:
    """float32; layer 0 full attention (6 of 6 tokens); layer 1 sliding (window 8, seen 10,
    stored 6, contiguous positions 4..9). Keys of layer 1, head 0, token 2 are a constant
    0.1 (a group whose INT scale underflows float16, forcing float32 side information)."""
    k0, v0 = tensor(1, torch.float32, 1), tensor(2, torch.float32)
    k1, v1 = tensor(3, torch.float32, 1), tensor(4, torch.float32)
    k1[0, 0, 2, :] = 0.1
    return KVCache(
        [
            LayerKV.contiguous(k0, v0),
            LayerKV.contiguous(k1, v1, 10, layer_type="sliding_attention", sliding_window=8),
        ]
    )


def cache_bf16() -> KVCache:
    """bfloat16; layer 0 with per-head positions (seen 12); layer 1 with shared
    non-contiguous positions (seen 12)."""
    k0, v0 = tensor(5, torch.bfloat16, 2), tensor(6, torch.bfloat16)
    k1, v1 = tensor(7, torch.bfloat16, 2), tensor(8, torch.bfloat16)
    per_head = torch.tensor([[0, 2, 3, 7, 10, 11], [1, 4, 5, 6, 9, 11]], dtype=torch.int64)
    shared = torch.tensor([0, 1, 2, 5, 8, 11], dtype=torch.int64)
    return KVCache([LayerKV(k0, v0, per_head, 12), LayerKV(k1, v1, shared, 12)])


def cache_f16() -> KVCache:
    """float16 with values up to ±65504 (FP16's largest): a quantizer's top code lands a
    little above the group maximum, and the decoder must saturate instead of giving ±inf."""
    k0, v0 = tensor(9, torch.float32), tensor(10, torch.float32)
    k1, v1 = tensor(11, torch.float32), tensor(12, torch.float32)
    for x in (k0, v0, k1, v1):
        x.mul_(16384)  # |x| < 32768
        x[0, 0, 0, 0], x[0, 0, 0, 3] = -65504.0, 65504.0
        x[0, 1, :, 1] = 65504.0
    return KVCache([LayerKV.contiguous(x.half(), y.half()) for x, y in ((k0, v0), (k1, v1))])


CACHES = {"f32": cache_f32, "bf16": cache_bf16, "f16": cache_f16}

# name → (cache, spec, note)
VECTORS = {
    "identity_f32": ("f32", "identity", "native float32 arrays; sliding layer; positions mode 0"),
    "identity_bf16": ("bf16", "identity", "native bfloat16 arrays (dtype code 3); positions modes 2 and 1"),
    "fp16_bf16": ("bf16", "fp16", "FP16 cast of a bfloat16 cache"),
    "int8_f32": ("f32", "int8", "INT8 asymmetric per-token; layer 1 keys' scale is float32 (constant token)"),
    "int4_token_f32": ("f32", "int4", "INT4 asymmetric per-token; layer 1 keys' scale is float32 (constant token)"),
    "int4_sym_channel_bf16": ("bf16", "int4:axis=channel,sym=true", "INT4 symmetric per-channel"),
    "int3_group2_f32": ("f32", "int3:group=2", "INT3 per-token, groups of 2 channels; 3-bit packing"),
    "sign_f32": ("f32", "sign", "1-bit sign with mean-|x| scale"),
    "mixed_bf16": ("bf16", "k=int4:axis=channel v=int2 L0=fp16", "mixed: layer 0 FP16, then KIVI-style split"),
    "sign_channel_pad_f32": (
        "f32",
        "sign:axis=channel,group=4",
        "per-channel runs of 4 tokens over 6: the last run (2 tokens) is padded by repeating token 5",
    ),
    "int16_f32": ("f32", "int16", "INT16: int32 code storage, 16-bit packing, float32 scales"),
    "identity_int4_chain_f32": ("f32", "identity+int4:group=2", "two-stage chain: identity then INT4, groups of 2"),
    "fp16_int4_chain_f32": ("f32", "fp16+int4:axis=channel", "two-stage chain: FP16 cast, then INT4 per channel"),
    "int4_f16_saturate": (
        "f16",
        "k=int4:axis=channel,sym=true v=int4",
        "float16 cache with ±65504: decoded values past 65504 saturate to ±65504 instead of ±inf",
    ),
}


def layer_json(layer: LayerKV) -> dict:
    return {
        "dtype": str(layer.keys.dtype).replace("torch.", ""),
        "keys_shape": list(layer.keys.shape),
        "values_shape": list(layer.values.shape),
        "positions": layer.positions.tolist(),
        "seen_tokens": layer.seen_tokens,
        "layer_type": layer.layer_type,
        "sliding_window": layer.sliding_window,
        "keys": layer.keys.double().reshape(-1).tolist(),
        "values": layer.values.double().reshape(-1).tolist(),
    }


def cache_json(cache: KVCache) -> list[dict]:
    return [layer_json(layer) for layer in cache]


def walk_sections(payload: bytes) -> dict:
    """Section sizes straight from the bytes (preamble header_len, each section_len)."""
    (header_len,) = struct.unpack_from("<I", payload, 8)
    header = 12 + header_len + 4
    pos, layers = header, []
    while pos < len(payload):
        (length,) = struct.unpack_from("<I", payload, pos)
        layers.append(4 + length + 4)
        pos += 4 + length + 4
    assert pos == len(payload)
    return {"total_bytes": len(payload), "header_bytes": header, "layer_bytes": layers}


def dumps(doc: dict) -> str:
    """Indented JSON with every list of numbers on one line."""
    text = json.dumps(doc, indent=1)
    return re.sub(r"\[[-+0-9.eE,\s]*\]", lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", "), text) + "\n"


def main() -> int:
    for old in list(HERE.glob("*.kvc")) + list(HERE.glob("*.json")):
        old.unlink()
    for name, (cache_name, spec, note) in VECTORS.items():
        cache = CACHES[cache_name]()
        payload = kvcodec.encode(cache, spec)
        assert len(payload) < 2048, (name, len(payload))
        decoded = kvcodec.decode(payload)
        doc = {
            "name": name,
            "note": note,
            "spec": spec,
            "canonical_spec": kvcodec.Pipeline.parse(spec).describe(),
            "kvcodec_version": kvcodec.__version__,
            "wire_version": "1.0",
            "payload": {
                "file": f"{name}.kvc",
                "length": len(payload),
                "sha256": hashlib.sha256(payload).hexdigest(),
                **walk_sections(payload),
            },
            "input": cache_json(cache),
            "expected": cache_json(decoded),
        }
        (HERE / f"{name}.kvc").write_bytes(payload)
        (HERE / f"{name}.json").write_text(dumps(doc))
        print(f"{name:24s} {len(payload):5d} B  {doc['payload']['sha256'][:16]}  {spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
