"""Token selectors (``kvcodec_builtins.select``, ``specs/selectors.md``), without a model:
exact keep counts, kept tokens that are the originals at their positions, keep=1.0 as the
identity, each selector's rule on hand-made caches and statistics, composition with
tensor stages, rejected pipelines, per-head positions on the wire, in ``KVCache.stack``,
in the DynamicCache and in the receiver's position-aware mask, and the transport of the
statistics to worker processes."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from conftest import join_payload, kv_caches, make_cache, split_payload
from hypothesis import given, settings
from hypothesis import strategies as st

import kvcodec
from kvcodec import CodecError, DecodeError, KVCache, LayerKV, Pipeline, SpecError, wire
from kvcodec.attention import attention_requests
from kvcodec.cache import SLIDING_ATTENTION
from kvcodec.chain import Chain
from kvcodec.generate import needs_positioned_attention, positioned_mask
from kvcodec.plugins import get_registry
from kvcodec.roundtrip import RoundTripper, context_from_arrays, context_to_arrays, round_trip
from kvcodec_builtins.select import SELECTORS, keep_count
from kvcodec_builtins.select.base import keep_indices

GROUP = 2  # query heads per KV head in the synthetic statistics
REQUESTS = ("question", "all", "window:4", "window:32")
SPECS = {
    "q2c": "q2c:keep={keep}",
    "q2c_heads": "q2c:keep={keep},per_head=true",
    "snapkv": "snapkv:keep={keep},window=4,kernel=3",
    "snapkv_max": "snapkv:keep={keep},pool=max",
    "h2o": "h2o:keep={keep},recent=0.25",
    "streamingllm": "streamingllm:keep={keep},sinks=2",
    "knorm": "knorm:keep={keep}",
    "knorm_shared": "knorm:keep={keep},per_head=false",
    "random": "random:keep={keep},seed=3",
    "random_heads": "random:keep={keep},per_head=true",
}
PER_HEAD = {"q2c_heads", "snapkv", "snapkv_max", "h2o", "knorm", "random_heads"}


def stats_for(cache: KVCache, seed: int = 0) -> dict[str, list[torch.Tensor]]:
    """Synthetic attention statistics that fit ``cache``: ``[1, GROUP·H, seen]`` per layer."""
    gen = torch.Generator().manual_seed(seed)
    return {
        r: [torch.rand(1, GROUP * layer.kv_heads, layer.seen_tokens, generator=gen) for layer in cache] for r in REQUESTS
    }


def select(cache: KVCache, spec: str, stats=None) -> KVCache:
    (stage,) = Pipeline.parse(spec + " identity").cache_stages
    return stage.apply(cache, {"attention": stats if stats is not None else stats_for(cache)})


def rows(layer: LayerKV) -> torch.Tensor:
    return layer.positions if layer.positions.dim() == 2 else layer.positions.expand(layer.kv_heads, -1)


def test_every_selector_is_registered():
    names = {cls.name for cls in SELECTORS}
    assert names == {"q2c", "snapkv", "h2o", "streamingllm", "knorm", "random"}
    registry = get_registry()
    for name in names:
        assert registry.get(name).family == "selector"
        assert registry.get(name).plugin == "kvcodec_builtins.select"


# ----------------------------------------------------------------------------- keep count
@pytest.mark.parametrize(
    ("keep", "tokens", "n"),
    [(0.5, 10, 5), (0.5, 7, 4), (0.3, 10, 3), (0.1, 10, 1), (0.7, 10, 7), (0.25, 159, 40), (1e-9, 5, 1), (1.0, 9, 9), (0.999, 3, 3)],
)
def test_keep_count(keep, tokens, n):
    assert keep_count(keep, tokens) == n


@given(st.floats(1e-6, 1.0), st.integers(1, 1 << 20))
def test_keep_count_is_the_smallest_count_reaching_the_fraction(keep, tokens):
    n = keep_count(keep, tokens)
    assert 1 <= n <= tokens
    assert n >= keep * tokens - 1e-6
    assert n == 1 or n - 1 < keep * tokens - 1e-6


# ----------------------------------------------------------------------------- properties on drawn caches
@settings(max_examples=40)
@given(cache=kv_caches(max_layers=3, max_seq=24), name=st.sampled_from(sorted(SPECS)), keep=st.sampled_from((0.1, 0.25, 0.5, 0.75)))
def test_selection_keeps_the_count_and_the_original_tokens_at_their_positions(cache, name, keep):
    out = select(cache, SPECS[name].format(keep=keep))
    assert out.num_layers == cache.num_layers
    for a, b in zip(cache, out):
        n = keep_count(keep, a.seq_len)
        assert b.seq_len == n
        assert (b.seen_tokens, b.layer_type, b.sliding_window, b.kv_heads) == (a.seen_tokens, a.layer_type, a.sliding_window, a.kv_heads)
        if n == a.seq_len:
            assert b is a  # nothing dropped: the layer is sent as it is
            continue
        per_head = (name in PER_HEAD and a.kv_heads > 1) or a.positions.dim() == 2
        assert b.positions.dim() == (2 if per_head else 1)  # one KV head: per-head positions are shared ones
        pa, pb = rows(a), rows(b)
        for h in range(a.kv_heads):
            kept = pb[h]
            assert bool((kept[1:] > kept[:-1]).all()), "positions must be sorted and distinct"
            index = {int(p): t for t, p in enumerate(pa[h])}
            assert all(int(p) in index for p in kept), "a kept position the layer did not have"
            src = torch.tensor([index[int(p)] for p in kept])
            assert torch.equal(a.keys[:, h].index_select(1, src), b.keys[:, h])
            assert torch.equal(a.values[:, h].index_select(1, src), b.values[:, h])


@settings(max_examples=25)
@given(cache=kv_caches(max_layers=3, max_seq=24), name=st.sampled_from(sorted(SPECS)))
def test_keep_one_is_the_identity(cache, name):
    spec = SPECS[name].format(keep=1.0)
    stats = stats_for(cache)
    out = select(cache, spec, stats)
    assert all(a is b for a, b in zip(cache, out))
    for chain in ("int8", "identity"):
        plain = kvcodec.encode(cache, chain)
        selected = kvcodec.encode(cache, f"{spec} {chain}", attention=stats)
        # the same sections, byte for byte; only the header names the selector
        assert split_payload(selected)[2] == split_payload(plain)[2]
        assert len(selected) - len(plain) == wire.load_header(selected).size - wire.load_header(plain).size


@settings(max_examples=15)
@given(cache=kv_caches(max_layers=2, max_seq=24), name=st.sampled_from(sorted(SPECS)))
def test_selection_is_deterministic(cache, name):
    stats = stats_for(cache)
    spec = SPECS[name].format(keep=0.5)
    a, b = select(cache, spec, stats), select(cache, spec, stats)
    assert all(torch.equal(x.positions, y.positions) and torch.equal(x.keys, y.keys) for x, y in zip(a, b))


def test_random_depends_on_its_seed_only():
    cache = make_cache(seed=4, layers=3, heads=2, seq=64)
    first = select(cache, "random:keep=0.5,seed=7")
    again = select(cache, "random:keep=0.5,seed=7", stats_for(cache, seed=99))
    other = select(cache, "random:keep=0.5,seed=8")
    assert all(torch.equal(x.positions, y.positions) for x, y in zip(first, again))
    assert not all(torch.equal(x.positions, y.positions) for x, y in zip(first, other))
    assert not torch.equal(first[0].positions, first[1].positions)  # each layer draws its own


# ----------------------------------------------------------------------------- each selector's rule
def one_layer(seq: int = 10, heads: int = 1, seen: int | None = None, **kw) -> KVCache:
    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(1, heads, seq, 4, generator=gen), torch.randn(1, heads, seq, 4, generator=gen)
    return KVCache([LayerKV.contiguous(k, v, seen, **kw)])


def stats_of(*per_query_head: list[float]) -> list[torch.Tensor]:
    return [torch.tensor([per_query_head], dtype=torch.float32)]


def test_q2c_keeps_what_the_question_reads_pooling_the_query_heads_of_each_kv_head():
    cache = one_layer(seq=6, heads=2)
    # query heads 0, 1 read KV head 0; query heads 2, 3 read KV head 1
    q = stats_of([9, 0, 0, 0, 0, 1], [9, 0, 4, 0, 0, 1], [0, 0, 0, 8, 0, 0], [0, 2, 0, 0, 0, 0])
    per_head = select(cache, "q2c:keep=0.33,per_head=true", {"question": q})[0].positions
    assert per_head.tolist() == [[0, 2], [1, 3]]
    shared = select(cache, "q2c:keep=0.33", {"question": q})[0].positions
    assert shared.tolist() == [0, 3]  # means over all heads: 4.5, .5, 1, 2, 0, .5


def test_ties_go_to_the_more_recent_token():
    assert keep_indices(torch.zeros(1, 5), torch.arange(5).unsqueeze(0), 2).tolist() == [[3, 4]]
    scores = torch.tensor([[1.0, 3, 1, 3, 1]])
    assert keep_indices(scores, torch.tensor([[0, 2, 4, 6, 8]]), 3).tolist() == [[1, 3, 4]]
    assert keep_indices(torch.tensor([[float("nan"), 0.0]]), torch.tensor([[0, 1]]), 1).tolist() == [[1]]


def test_snapkv_keeps_the_window_and_pools_the_prefix():
    cache = one_layer(seq=12)
    window = [0.0] * 12
    window[2] = 5.0  # the window's attention to the prefix: a spike at token 2 …
    window[7] = 2.0  # … and a smaller one at token 7
    stats = {"window:3": stats_of(window)}
    # n = 6: the window 9, 10, 11, then the averaged spike 1, 2, 3 (5/3 each; 6, 7, 8 have 2/3)
    avg = select(cache, "snapkv:keep=0.5,window=3,kernel=3", stats)[0].positions.tolist()
    assert avg == [1, 2, 3, 9, 10, 11]
    wide = select(cache, "snapkv:keep=0.75,window=3,kernel=3", stats)[0].positions.tolist()
    assert wide == [1, 2, 3, 6, 7, 8, 9, 10, 11]
    # max pooling over 5: tokens 0 … 4 all score 5; the three most recent of them win the tie
    mx = select(cache, "snapkv:keep=0.5,window=3,kernel=5,pool=max", stats)[0].positions.tolist()
    assert mx == [2, 3, 4, 9, 10, 11]
    # kernel 1: no pooling
    assert select(cache, "snapkv:keep=0.34,window=3,kernel=1", stats)[0].positions.tolist() == [2, 7, 9, 10, 11]
    # a window wider than the budget keeps the most recent window tokens
    assert select(cache, "snapkv:keep=0.25,window=8", {"window:8": stats_of(window)})[0].positions.tolist() == [9, 10, 11]


def test_h2o_keeps_a_recent_share_and_the_heavy_hitters():
    cache = one_layer(seq=10)
    acc = stats_of([9, 1, 8, 1, 1, 7, 1, 1, 1, 1])
    out = select(cache, "h2o:keep=0.4,recent=0.5", {"all": acc})[0].positions.tolist()
    assert out == [0, 2, 8, 9]  # n = 4: 2 most recent, 2 heaviest
    out = select(cache, "h2o:keep=0.4,recent=0", {"all": acc})[0].positions.tolist()
    assert out == [0, 2, 5, 9]  # pure heavy hitters: 9, 8, 7, then the most recent of the 1s
    assert select(cache, "h2o:keep=0.4,recent=1", {"all": acc})[0].positions.tolist() == [6, 7, 8, 9]


def test_streamingllm_keeps_sinks_and_the_recent_window():
    cache = one_layer(seq=10)
    assert select(cache, "streamingllm:keep=0.5,sinks=2")[0].positions.tolist() == [0, 1, 7, 8, 9]
    assert select(cache, "streamingllm:keep=0.3,sinks=4")[0].positions.tolist() == [0, 1, 2]
    assert select(cache, "streamingllm:keep=0.3,sinks=0")[0].positions.tolist() == [7, 8, 9]


def test_knorm_keeps_the_lowest_key_norms_per_head():
    k = torch.tensor([[3.0, 1, 2, 5], [1, 4, 3, 2]]).reshape(1, 2, 4, 1) * torch.ones(1, 1, 1, 4)
    cache = KVCache([LayerKV.contiguous(k, k.clone())])
    assert select(cache, "knorm:keep=0.5")[0].positions.tolist() == [[1, 2], [0, 3]]
    assert select(cache, "knorm:keep=0.5,per_head=false")[0].positions.tolist() == [0, 2]  # mean norms 2, 2.5, 2.5, 3.5


def test_a_sliding_layer_selects_among_its_stored_tokens():
    cache = one_layer(seq=7, heads=2, seen=20, layer_type=SLIDING_ATTENTION, sliding_window=8)
    for name, spec in SPECS.items():
        layer = select(cache, spec.format(keep=0.5))[0]
        assert layer.seq_len == 4 and layer.seen_tokens == 20 and layer.sliding_window == 8
        assert set(rows(layer).flatten().tolist()) <= set(range(13, 20)), name


def test_an_already_selected_cache_is_selected_again_per_head():
    cache = select(make_cache(seed=1, layers=2, heads=3, seq=20), "knorm:keep=0.5")
    twice = select(cache, "streamingllm:keep=0.5,sinks=1")
    for a, b in zip(cache, twice):
        assert b.positions.shape == (3, 5)
        for h in range(3):
            assert b.positions[h].tolist() == [a.positions[h, 0].item()] + a.positions[h, -4:].tolist()


# ----------------------------------------------------------------------------- parameters, context, composition
@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("q2c:keep=0 int8", "0 < keep ≤ 1"),
        ("q2c:keep=1.5 int8", "0 < keep ≤ 1"),
        ("q2c:keep=nan int8", "finite"),
        ("random:keep=-0.5 int8", "0 < keep ≤ 1"),
        ("snapkv:keep=0.5,kernel=4 int8", "odd"),
        ("snapkv:keep=0.5,window=0 int8", "window"),
        ("snapkv:keep=0.5,pool=median int8", "pool"),
        ("h2o:keep=0.5,recent=2 int8", "0 ≤ recent ≤ 1"),
        ("streamingllm:keep=0.5,sinks=-1 int8", "sinks"),
        ("random:keep=0.5,seed=-1 int8", "seed"),
        ("knorm:fraction=0.5 int8", "has no parameter 'fraction'"),
    ],
)
def test_bad_parameters_are_rejected(spec, words):
    with pytest.raises(SpecError) as exc:
        Pipeline.parse(spec)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_spec_strings_name_the_fraction():
    for text in ("q2c:keep=0.5 int8", "snapkv:keep=0.25,window=16 int8", "random:keep=0.5,seed=1 k=int4 v=int8"):
        p = Pipeline.parse(text)
        assert p.describe() == text and Pipeline.parse(p.describe()) == p
    assert Pipeline.parse("q2c int8").describe() == "q2c int8"  # keep=1.0, the default: nothing dropped


@pytest.mark.parametrize("name", ["q2c", "snapkv", "h2o"])
def test_attention_selectors_need_their_statistics(name):
    cache = make_cache(seed=0, layers=2, heads=2, seq=8)
    (stage,) = Pipeline.parse(f"{name}:keep=0.5 int8").cache_stages
    with pytest.raises(CodecError, match=r"needs the sender's attention statistics context\['attention'\]"):
        stage.apply(cache, {})
    stats = stats_for(cache)
    with pytest.raises(CodecError, match="cover 1 layers, the cache has 2"):
        stage.apply(cache, {"attention": {k: v[:1] for k, v in stats.items()}})
    with pytest.raises(CodecError, match="cover 7 context tokens, the layer has seen 8"):
        stage.apply(cache, {"attention": {k: [t[..., :7] for t in v] for k, v in stats.items()}})
    with pytest.raises(CodecError, match="multiple of 2 query heads"):
        stage.apply(cache, {"attention": {k: [t[:, :3] for t in v] for k, v in stats.items()}})
    assert stage.apply(cache, {"attention": stats})[0].seq_len == 4


def test_attention_requests_of_pipelines():
    pipelines = [Pipeline.parse(s) for s in ("q2c:keep=0.5 int8", "snapkv:keep=0.5,window=8 int4", "h2o:keep=0.5 int8")]
    assert attention_requests(pipelines) == ("all", "question", "window:8")
    assert attention_requests([Pipeline.parse(s) for s in ("int8", "random:keep=0.5 int8", "knorm:keep=0.5 fp16")]) == ()


def test_q2c_then_int8_round_trips_and_is_smaller():
    cache = make_cache(seed=2, layers=3, heads=2, seq=40, head_dim=16)
    stats = stats_for(cache)
    plain = kvcodec.encode(cache, "int8")
    data = kvcodec.encode(cache, "q2c:keep=0.5 int8", attention=stats)
    assert len(data) < 0.6 * len(plain)
    received = kvcodec.decode(data)
    expected = select(cache, "q2c:keep=0.5", stats)
    for a, b in zip(expected, received):
        assert torch.equal(a.positions, b.positions) and b.seen_tokens == 40
        assert (a.keys - b.keys).abs().max() < 0.05 * a.keys.abs().max()
    info = kvcodec.inspect(data)
    assert info.cache_stages == ("q2c:keep=0.5",) and info.elements == received.num_elements
    # positions travel in the payload: 4 bytes each (shared by the heads for q2c)
    sel = kvcodec.encode(expected, "int8")
    assert len(data) - len(sel) == wire.load_header(data).size - wire.load_header(sel).size


def test_per_head_positions_cost_four_bytes_per_head_and_token():
    cache = make_cache(seed=2, layers=1, heads=3, seq=40, head_dim=16)
    shared = kvcodec.encode(cache, "knorm:keep=0.5,per_head=false int8")
    per_head = kvcodec.encode(cache, "knorm:keep=0.5 int8")
    # same header size (a bool parameter either way), 20 tokens: 3·20 vs 20 positions
    assert len(per_head) - len(shared) == 4 * (3 * 20 - 20)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("int8+random:keep=0.5", "selector 'random' works on the whole cache; put it first"),
        ("q2c:keep=0.5+int8+knorm:keep=0.5", "selector 'knorm' works on the whole cache; put it first"),
        ("L0=streamingllm:keep=0.5 int8", "cannot be limited to 'L0'"),
        ("k=knorm:keep=0.5 int8", "cannot be limited to 'k'"),
        ("q2c:keep=0.5", "no chain covers the keys of every layer"),
    ],
)
def test_impossible_pipelines_are_rejected_in_one_line(spec, words):
    with pytest.raises(SpecError) as exc:
        Pipeline.parse(spec)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_clauses_are_not_a_sequence_a_selector_clause_anywhere_runs_first():
    assert Pipeline.parse("int8 q2c:keep=0.5").describe() == "q2c:keep=0.5 int8"


def test_a_selector_inside_a_chain_is_rejected():
    (stage,) = Pipeline.parse("q2c:keep=0.5 int8").cache_stages
    (int8,) = Pipeline.parse("int8").rules[0].chain.stages
    with pytest.raises(ValueError, match="'q2c' works on the whole cache and must come first in the pipeline"):
        Chain([int8, stage])


def test_selectors_compose_in_order():
    cache = make_cache(seed=3, layers=2, heads=2, seq=16)
    stats = stats_for(cache)
    data = kvcodec.encode(cache, "streamingllm:keep=0.5,sinks=1 random:keep=0.5 int8", attention=stats)
    assert [l.seq_len for l in kvcodec.decode(data)] == [4, 4]
    assert kvcodec.inspect(data).cache_stages == ("streamingllm:keep=0.5,sinks=1", "random:keep=0.5")


def test_a_payload_with_a_selector_in_a_chain_is_rejected():
    cache = make_cache(seed=3, layers=1, heads=2, seq=8)
    data = kvcodec.encode(cache, "random:keep=0.5 identity")
    pre, header, bodies = split_payload(data)
    # header: batch u32 · layers u16 · 1 cache stage (the selector) · chain table: u16 count,
    # u8 length, the 12-byte identity stage (wire-format.md §4)
    selector, table = header[7:-15], header[-15:]
    assert header[6] == 1 and table[:3] == b"\x01\x00\x01"
    forged = header[:6] + b"\x00" + b"\x01\x00\x01" + selector  # no cache stage; the selector as the chain
    with pytest.raises(DecodeError, match="codec 'random' is in the wrong list"):
        kvcodec.decode(join_payload(pre, forged, bodies))


# ----------------------------------------------------------------------------- positions on the wire
POS = 23  # offset of the positions in a section body (wire-format.md §6.1)


def per_head_payload() -> tuple[bytes, KVCache]:
    cache = select(make_cache(seed=5, layers=2, heads=2, seq=8, head_dim=4), "knorm:keep=0.5")
    assert cache[0].positions.shape == (2, 4)
    return kvcodec.encode(cache, "identity"), cache


def with_positions(data: bytes, layer: int, values: list[int]) -> bytes:
    pre, header, bodies = split_payload(data)
    body = bytearray(bodies[layer])
    assert body[POS - 1] == wire.POS_PER_HEAD
    struct.pack_into(f"<{len(values)}i", body, POS, *values)
    bodies[layer] = bytes(body)
    return join_payload(pre, header, bodies)


def test_per_head_positions_round_trip():
    data, cache = per_head_payload()
    got = kvcodec.decode(data)
    assert all(torch.equal(a.positions, b.positions) and torch.equal(a.keys, b.keys) for a, b in zip(cache, got))
    assert with_positions(data, 0, cache[0].positions.flatten().tolist()) == data


@pytest.mark.parametrize(
    ("positions", "words"),
    [
        ([0, 1, 2, 8, 0, 1, 2, 3], "token positions outside 0..7"),
        ([0, 1, 2, -1, 0, 1, 2, 3], "token positions outside 0..7"),
        ([0, 2, 1, 3, 0, 1, 2, 3], "not strictly increasing"),
        ([0, 1, 2, 3, 0, 1, 1, 3], "not strictly increasing"),
        ([0, 1, 2, 3, 3, 2, 1, 0], "not strictly increasing"),
    ],
)
def test_malformed_per_head_positions_are_rejected(positions, words):
    data, _ = per_head_payload()
    with pytest.raises(DecodeError, match=words):
        kvcodec.decode(with_positions(data, 1, positions))


def test_per_head_positions_of_the_wrong_shape_are_rejected():
    data, _ = per_head_payload()
    pre, header, bodies = split_payload(data)
    for mode, heads in ((wire.POS_SHARED, None), (wire.POS_PER_HEAD, 1), (wire.POS_PER_HEAD, 3)):
        body = bytearray(bodies[0])
        body[POS - 1] = mode
        if heads is not None:
            struct.pack_into("<H", body, 12, heads)  # kv_heads: the [H, T] block no longer fits
        with pytest.raises(DecodeError):
            kvcodec.decode(join_payload(pre, header, [bytes(body), bodies[1]]))


@pytest.mark.parametrize(
    ("positions", "words"),
    [([[0, 2, 1], [0, 1, 2]], "not strictly increasing"), ([[0, 1, 1], [0, 1, 2]], "not strictly increasing")],
)
def test_a_writer_refuses_positions_a_reader_rejects(positions, words):
    k = torch.zeros(1, 2, 3, 4)
    cache = KVCache([LayerKV(k, k, torch.tensor(positions), 5)])
    with pytest.raises(CodecError, match=words):
        kvcodec.encode(cache, "identity")


# ----------------------------------------------------------------------------- receiver side
def test_selected_caches_stack_when_their_selection_is_the_same():
    cache = make_cache(seed=6, layers=2, heads=2, seq=10)
    stats = stats_for(cache)
    a = kvcodec.decode(kvcodec.encode(cache, "snapkv:keep=0.5,window=4 int8", attention=stats))
    b = kvcodec.decode(kvcodec.encode(cache, "snapkv:keep=0.5,window=4 int4", attention=stats))
    stacked = KVCache.stack([a, b])
    assert stacked.batch_size == 2 and stacked[0].positions.shape == (2, 5)
    assert torch.equal(stacked[0].keys[1:], b[0].keys)
    c = kvcodec.decode(kvcodec.encode(cache, "random:keep=0.5 int8"))
    with pytest.raises(ValueError, match="different geometry"):
        KVCache.stack([a, c])
    dyn = stacked.to_dynamic_cache()
    assert dyn.layers[1].keys.shape == (2, 2, 5, 16) and dyn.get_seq_length() == 5


def test_which_caches_need_position_aware_attention():
    cache = make_cache(seed=7, layers=2, heads=2, seq=10)
    assert not needs_positioned_attention(cache)
    assert not needs_positioned_attention(select(cache, "knorm:keep=0.5"))  # full layers: transformers' masks are right
    sliding = one_layer(seq=7, seen=20, layer_type=SLIDING_ATTENTION, sliding_window=8)
    assert not needs_positioned_attention(sliding)  # contiguous: the last stored tokens
    assert needs_positioned_attention(select(sliding, "streamingllm:keep=0.5,sinks=1"))
    # the contiguous tail, but fewer tokens than transformers assumes a sliding layer holds
    tail = select(sliding, "streamingllm:keep=0.5,sinks=0")
    assert tail[0].has_contiguous_positions and needs_positioned_attention(tail)
    short = one_layer(seq=5, seen=5, layer_type=SLIDING_ATTENTION, sliding_window=8)
    assert not needs_positioned_attention(short) and needs_positioned_attention(select(short, "knorm:keep=0.5"))
    uneven = KVCache([cache[0], select(cache, "random:keep=0.5")[1]])
    assert needs_positioned_attention(uneven)


@settings(max_examples=60)
@given(
    seen=st.integers(1, 30),
    data=st.data(),
    rows_=st.integers(1, 3),
    new=st.integers(1, 6),
    window=st.one_of(st.none(), st.integers(1, 12)),
)
def test_the_receiver_mask_follows_the_true_positions(seen, data, rows_, new, window):
    stored = data.draw(st.integers(1, seen))
    cached = torch.stack([torch.randperm(seen)[:stored].sort().values for _ in range(rows_)])
    q_len = data.draw(st.integers(1, new))
    got = positioned_mask(cached, seen, stored + new, q_len, window)
    assert got.shape == (rows_, q_len, stored + new)
    for r in range(rows_):
        keys = cached[r].tolist() + list(range(seen, seen + new))
        for i in range(q_len):
            p = seen + new - q_len + i
            for j, k in enumerate(keys):
                assert bool(got[r, i, j]) == (k <= p and (window is None or k > p - window))


# ----------------------------------------------------------------------------- context to worker processes
def test_contexts_travel_as_arrays():
    stats = {"question": [torch.rand(1, 4, 9), torch.rand(1, 4, 9).to(torch.bfloat16)]}
    context = {"attention": stats, "question_ids": [1, 2, 3], "note": None, "pair": (1.5, "x")}
    packed = context_to_arrays(context)
    back = context_from_arrays(packed)
    assert back["question_ids"] == [1, 2, 3] and back["pair"] == (1.5, "x") and back["note"] is None
    for a, b in zip(stats["question"], back["attention"]["question"]):
        assert a.dtype == b.dtype and torch.equal(a, b)
    with pytest.raises(TypeError, match="cannot carry a object"):
        context_to_arrays({"bad": object()})


def test_a_worker_selects_like_this_process():
    cache = make_cache(seed=8, layers=2, heads=2, seq=12)
    context = {"attention": stats_for(cache), "question_ids": [5, 6]}
    specs = ["q2c:keep=0.5 int8", "snapkv:keep=0.25,window=4 int8", "int8"]
    local = [round_trip(cache, s, True, context) for s in specs]
    with RoundTripper(workers=1) as tripper:
        remote = [f.result() for f in tripper.submit(cache, specs, context=context)]
    for a, b in zip(local, remote):
        assert a.nbytes == b.nbytes
        assert all(torch.equal(x.positions, y.positions) and torch.equal(x.keys, y.keys) for x, y in zip(a.cache, b.cache))
    assert local[0].nbytes < local[2].nbytes and math.isclose(local[0].cache[0].seq_len, 6)


@pytest.mark.parametrize("window", [None, 5])
def test_position_aware_attention_masks_each_kv_head_by_its_own_positions(window):
    from types import SimpleNamespace

    from kvcodec.generate import _ACTIVE, _Positioned, positioned_attention

    gen = torch.Generator().manual_seed(0)
    cached = torch.tensor([[0, 3, 6, 7], [1, 2, 5, 7]])  # 2 KV heads, 4 stored tokens each, seen 8
    new, q_len, heads, d = 3, 2, 4, 8
    query = torch.randn(1, heads, q_len, d, generator=gen)
    key = torch.randn(1, 2, 4 + new, d, generator=gen)
    value = torch.randn(1, 2, 4 + new, d, generator=gen)
    state = _Positioned(None, (cached,), (window,), 8)
    token = _ACTIVE.set(state)
    try:
        out, _ = positioned_attention(SimpleNamespace(layer_idx=0), query, key, value, None, scaling=0.5)
    finally:
        _ACTIVE.reset(token)
    assert out.shape == (1, q_len, heads, d)
    for h in range(heads):
        kv = h // 2
        positions = cached[kv].tolist() + [8, 9, 10]
        for i in range(q_len):
            p = 8 + new - q_len + i
            visible = torch.tensor([k <= p and (window is None or k > p - window) for k in positions])
            logits = (query[0, h, i] @ key[0, kv].T) * 0.5
            probs = logits.masked_fill(~visible, float("-inf")).softmax(-1)
            assert torch.allclose(out[0, i, h], probs @ value[0, kv], atol=1e-5)
