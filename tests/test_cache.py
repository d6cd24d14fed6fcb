"""The KV cache container (``kvcodec.cache``): conversion to and from transformers'
``DynamicCache`` (``DynamicLayer`` and ``DynamicSlidingWindowLayer``, keeping the seen
count ``cumulative_length`` apart from the stored length), and the validators that
reject inconsistent layers and caches."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_structure, kv_caches, make_cache
from hypothesis import given, settings
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

import kvcodec
from kvcodec.cache import FULL_ATTENTION, SLIDING_ATTENTION, KVCache, LayerKV

T, W = 10, 4  # prefill tokens; sliding window (a sliding layer stores the last W − 1 tokens)


def prefill_cache(seed: int = 0, dtype=torch.float32) -> tuple[DynamicCache, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A DynamicCache after a T-token prefill: layers full, sliding, full (Gemma-3 style)."""
    gen = torch.Generator().manual_seed(seed)
    kv = [(torch.randn(2, 3, T, 8, generator=gen).to(dtype), torch.randn(2, 3, T, 8, generator=gen).to(dtype)) for _ in range(3)]
    data = [kv[0], (*kv[1], torch.tensor(W)), kv[2]]
    return DynamicCache(ddp_cache_data=data), kv


def test_prefill_fixture_is_what_transformers_builds():
    dyn, kv = prefill_cache()
    assert [type(layer) for layer in dyn.layers] == [DynamicLayer, DynamicSlidingWindowLayer, DynamicLayer]
    assert dyn.layers[1].keys.shape[2] == W - 1 and dyn.layers[1].cumulative_length == T
    assert dyn.get_seq_length(1) == T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_from_dynamic_cache(dtype):
    dyn, kv = prefill_cache(dtype=dtype)
    cache = KVCache.from_dynamic_cache(dyn)
    assert cache.num_layers == 3 and cache.dtype == dtype and cache.batch_size == 2
    full, sliding = cache[0], cache[1]
    assert (full.layer_type, full.sliding_window, full.seen_tokens, full.seq_len) == (FULL_ATTENTION, None, T, T)
    assert torch.equal(full.positions, torch.arange(T))
    assert torch.equal(full.keys, kv[0][0]) and torch.equal(full.values, kv[0][1])
    assert (sliding.layer_type, sliding.sliding_window, sliding.seen_tokens, sliding.seq_len) == (SLIDING_ATTENTION, W, T, W - 1)
    assert torch.equal(sliding.positions, torch.arange(T - W + 1, T))
    assert sliding.has_contiguous_positions
    assert torch.equal(sliding.keys, kv[1][0][:, :, -(W - 1) :])


def test_to_dynamic_cache_round_trip():
    dyn, _ = prefill_cache()
    cache = KVCache.from_dynamic_cache(dyn)
    back = cache.to_dynamic_cache()
    assert [type(layer) for layer in back.layers] == [DynamicLayer, DynamicSlidingWindowLayer, DynamicLayer]
    for a, b in zip(dyn.layers, back.layers):
        assert b.is_initialized
        assert b.keys is not None and b.keys.data_ptr() == a.keys.data_ptr()  # shared, not copied
        assert torch.equal(a.values, b.values)
        assert b.get_seq_length() == a.get_seq_length()
        assert b.get_mask_sizes(1) == a.get_mask_sizes(1)
    assert back.layers[1].cumulative_length == T and back.layers[1].sliding_window == W
    assert back.get_seq_length(0) == T and back.get_seq_length(1) == T
    again = KVCache.from_dynamic_cache(back)
    assert_same_structure(cache, again)


def test_round_trip_through_the_wire_then_continue_generating():
    """A decoded cache behaves exactly like the original when the model appends tokens."""
    dyn, _ = prefill_cache(seed=3)
    received = kvcodec.decode(kvcodec.encode(KVCache.from_dynamic_cache(dyn), "identity")).to_dynamic_cache()
    gen = torch.Generator().manual_seed(9)
    for _ in range(3):  # three decode steps
        for i in range(3):
            k, v = torch.randn(2, 3, 1, 8, generator=gen), torch.randn(2, 3, 1, 8, generator=gen)
            ka, va = dyn.update(k, v, i)
            kb, vb = received.update(k, v, i)
            assert torch.equal(ka, kb) and torch.equal(va, vb)
    for a, b in zip(dyn.layers, received.layers):
        assert torch.equal(a.keys, b.keys) and a.get_seq_length() == b.get_seq_length()
    assert received.layers[1].cumulative_length == T + 3
    assert received.layers[1].keys.shape[2] == W - 1
    assert received.get_seq_length(0) == T + 3


@given(cache=kv_caches(layer_kinds=("full", "sliding"), max_layers=3))
@settings(max_examples=30)
def test_kvcache_to_dynamic_and_back(cache):
    back = KVCache.from_dynamic_cache(cache.to_dynamic_cache())
    assert_same_structure(cache, back)
    for a, b in zip(cache, back):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_from_dynamic_cache_rejects_empty_layers():
    k = torch.randn(1, 1, 2, 4)
    dyn = DynamicCache(ddp_cache_data=[(k, k), (None, None)])
    with pytest.raises(ValueError, match="cache layer 1 is empty; run a prefill first"):
        KVCache.from_dynamic_cache(dyn)
    with pytest.raises(ValueError, match="empty"):
        KVCache.from_dynamic_cache(DynamicCache(ddp_cache_data=[(torch.zeros(1, 1, 0, 4), torch.zeros(1, 1, 0, 4))]))


def test_to_dynamic_cache_with_selected_tokens_keeps_the_tensors():
    cache = make_cache(layers=2, kind="selected", per_head=False, extra_seen=4)
    assert not cache[0].has_contiguous_positions
    dyn = cache.to_dynamic_cache()
    assert torch.equal(dyn.layers[0].keys, cache[0].keys)
    assert dyn.get_seq_length(0) == cache[0].seq_len  # a DynamicCache knows stored tokens only


# ----------------------------------------------------------------------------- validators
def kv(shape=(1, 2, 3, 4), dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(keys=kv((2, 3, 4)), values=kv((2, 3, 4))), "must be 4-D"),
        (dict(values=kv((1, 2, 5, 4))), "differ in batch, kv_heads or seq_len"),
        (dict(values=kv((2, 2, 3, 4))), "differ in batch"),
        (dict(values=kv(dtype=torch.float16)), "must share one of"),
        (dict(keys=torch.zeros((1, 2, 3, 4), dtype=torch.int32), values=torch.zeros((1, 2, 3, 4), dtype=torch.int32)), "must share one of"),
        (dict(keys=kv(dtype=torch.float64), values=kv(dtype=torch.float64)), "must share one of"),
        (dict(positions=torch.arange(3, dtype=torch.int32)), "positions must be int64"),
        (dict(positions=torch.arange(4)), "positions must be int64 of shape [seq_len]=3"),
        (dict(positions=torch.zeros(3, 3, dtype=torch.int64)), "[kv_heads, seq_len]=(2, 3)"),
        (dict(seen_tokens=2), "seen_tokens=2 is less than the 3 stored tokens"),
        (dict(layer_type="global"), "layer_type must be one of"),
        (dict(layer_type=SLIDING_ATTENTION), "sliding_window must be set for sliding_attention layers"),
        (dict(sliding_window=8), "sliding_window must be set for sliding_attention layers and only for them"),
        (dict(layer_type=SLIDING_ATTENTION, sliding_window=0), "sliding_window must be ≥ 1"),
    ],
)
def test_layer_validators(kwargs, words):
    args = dict(keys=kv(), values=kv(), positions=torch.arange(3), seen_tokens=3)
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        LayerKV(**args)
    assert words in str(info.value)


def test_valid_layers():
    layer = LayerKV(kv(), kv((1, 2, 3, 6)), torch.tensor([[0, 5, 9], [1, 2, 3]]), 10)
    assert (layer.seq_len, layer.kv_heads, layer.head_dim) == (3, 2, 4)
    assert not layer.has_contiguous_positions
    contiguous = LayerKV.contiguous(kv(), kv(), 7, layer_type=SLIDING_ATTENTION, sliding_window=4)
    assert contiguous.positions.tolist() == [4, 5, 6] and contiguous.has_contiguous_positions
    assert LayerKV.contiguous(kv(), kv()).seen_tokens == 3
    assert LayerKV(kv(), kv(), torch.arange(3), "5").seen_tokens == 5  # converted to int
    replaced = contiguous.replace(seen_tokens=9)
    assert replaced.positions.tolist() == [4, 5, 6] and not replaced.has_contiguous_positions


def test_cache_validators():
    with pytest.raises(ValueError, match="at least one layer"):
        KVCache([])
    a = LayerKV.contiguous(kv(), kv())
    with pytest.raises(ValueError, match="layer 1 has batch/dtype/device"):
        KVCache([a, LayerKV.contiguous(kv((2, 2, 3, 4)), kv((2, 2, 3, 4)))])
    with pytest.raises(ValueError, match="layer 1 has batch/dtype/device"):
        KVCache([a, LayerKV.contiguous(kv(dtype=torch.bfloat16), kv(dtype=torch.bfloat16))])
    with pytest.raises(ValueError, match="is a tuple, not a LayerKV"):
        KVCache([a, (kv(), kv())])
    # sequence lengths, heads and head_dims may differ per layer
    KVCache([a, LayerKV.contiguous(kv((1, 4, 7, 8)), kv((1, 4, 7, 2)))])


def test_cache_properties_and_helpers():
    cache = make_cache(layers=3, batch=2, heads=2, seq=5, head_dim=4, dtype=torch.float16)
    assert len(cache) == cache.num_layers == 3
    assert cache.batch_size == 2 and cache.dtype == torch.float16 and cache.device == torch.device("cpu")
    assert cache.num_elements == 3 * 2 * (2 * 2 * 5 * 4)
    assert cache.nbytes == 2 * cache.num_elements
    assert [layer.seq_len for layer in cache] == [5, 5, 5]
    assert cache[1] is cache.layers[1]
    f32 = cache.to(dtype=torch.float32)
    assert f32.dtype == torch.float32 and torch.equal(f32[0].keys, cache[0].keys.float())
    assert_same_structure(cache, f32.to(dtype=torch.float16))
    doubled = cache.map(lambda i, layer: layer.replace(keys=layer.keys * 2))
    assert torch.equal(doubled[2].keys, cache[2].keys * 2) and doubled[2].values is cache[2].values
