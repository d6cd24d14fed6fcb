"""kvcodec: compress and transmit LLM KV caches with composable, pluggable codecs.

model → KV cache → codec chain → bytes → link → bytes → KV cache → model

>>> import kvcodec
>>> payload = kvcodec.encode(cache, "k=int4:axis=channel v=int4")   # bytes
>>> received = kvcodec.decode(payload)                              # KVCache
"""

from kvcodec.api import decode, encode, inspect
from kvcodec.cache import KVCache, LayerKV
from kvcodec.codec import CacheStage, Codes, Form, TensorStage
from kvcodec.errors import CodecError, DecodeError, KVCodecError, ModelError, PluginError, SpecError
from kvcodec.hookspecs import hookimpl
from kvcodec.pipeline import Pipeline

__version__ = "0.1.0"

__all__ = [
    "encode",
    "decode",
    "inspect",
    "KVCache",
    "LayerKV",
    "Pipeline",
    "TensorStage",
    "CacheStage",
    "Codes",
    "Form",
    "hookimpl",
    "KVCodecError",
    "SpecError",
    "CodecError",
    "DecodeError",
    "PluginError",
    "ModelError",
]
