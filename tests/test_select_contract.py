"""The codec contract suite (:mod:`kvcodec.testing`) on every built-in token selector.

Selectors that read attention get synthetic statistics; since one context must fit every
cache of a check, their caches share one geometry (2 layers, 2 KV heads, 12 seen tokens:
full, sliding and already-selected layers), drawn with any batch, dtype and values.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from kvcodec.cache import SLIDING_ATTENTION, KVCache
from kvcodec.testing import CodecContract
from kvcodec.testing.caches import make_layer

SEEN = 12
HEADS = 2
STATS = {
    r: [torch.rand(1, 2 * HEADS, SEEN, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    for r in ("question", "all", "window:4")
}


def geometry_cache(seed: int, batch: int = 1, dtype: torch.dtype = torch.float32, kinds=("full", "sliding")) -> KVCache:
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for kind in kinds:
        if kind == "full":
            layers.append(make_layer(gen, batch=batch, heads=HEADS, seq=SEEN, head_dim=8, dtype=dtype))
        elif kind == "sliding":
            layer = make_layer(gen, batch=batch, heads=HEADS, seq=7, head_dim=8, dtype=dtype, kind="sliding", extra_seen=SEEN - 7)
            layers.append(layer.replace(layer_type=SLIDING_ATTENTION))
        else:
            layers.append(make_layer(gen, batch=batch, heads=HEADS, seq=9, head_dim=8, dtype=dtype, kind="selected",
                                     extra_seen=SEEN - 9, per_head=kind == "per_head"))
    return KVCache(layers)


class _OneGeometry(CodecContract):
    context = {"attention": STATS, "question_ids": [1, 2, 3]}
    max_examples = 10

    def fixed_caches(self):
        return [
            geometry_cache(1),
            geometry_cache(2, batch=2, dtype=torch.bfloat16, kinds=("selected", "per_head")),
            geometry_cache(3, dtype=torch.float16, kinds=("per_head", "full")),
        ]

    def drawn_caches(self):
        kinds = st.lists(st.sampled_from(("full", "sliding", "selected", "per_head")), min_size=2, max_size=2)
        return st.builds(
            geometry_cache,
            st.integers(0, 2**31 - 1),
            st.integers(1, 2),
            st.sampled_from((torch.float32, torch.float16, torch.bfloat16)),
            kinds,
        )


class TestQ2C(_OneGeometry):
    spec = "q2c:keep=0.5 int8"
    codec = "q2c"
    invalid_params = ("keep=0", "keep=1.01", "keep=-1")


class TestQ2CPerHead(_OneGeometry):
    spec = "q2c:keep=0.25,per_head=true identity"
    codec = "q2c"


class TestSnapKV(_OneGeometry):
    spec = "snapkv:keep=0.5,window=4,kernel=3 k=int8 v=identity"
    codec = "snapkv"
    invalid_params = ("kernel=2", "window=0", "pool=min", "keep=0")


class TestH2O(_OneGeometry):
    spec = "h2o:keep=0.5,recent=0.5 int8"
    codec = "h2o"
    invalid_params = ("recent=1.5", "recent=-0.1", "keep=2")


class TestStreamingLLM(CodecContract):
    spec = "streamingllm:keep=0.5,sinks=2 int8"
    codec = "streamingllm"
    invalid_params = ("sinks=-1", "keep=0")
    max_examples = 10


class TestKNorm(CodecContract):
    spec = "knorm:keep=0.25 k=int4 v=int8"
    codec = "knorm"
    invalid_params = ("keep=0",)
    max_examples = 10


class TestRandom(CodecContract):
    spec = "random:keep=0.5,seed=1 identity"
    codec = "random"
    invalid_params = ("seed=-1", "keep=1.5")
    max_examples = 10
