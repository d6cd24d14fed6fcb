"""Chunked streaming container (kvcodec.stream, specs/streaming.md §2): round trips, per-chunk
levels, each chunk decoding alone, and untrusted chunks (truncated, flipped, duplicated,
missing, reordered, foreign) always raising DecodeError."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvcodec
from kvcodec import stream
from kvcodec.errors import DecodeError
from tests.conftest import kv_caches, make_cache, pipeline_specs

LEVELS = ("fp16", "int8", "int4:axis=channel", "k=int4:axis=channel v=int4", "int3:axis=channel")


def _same_values(a: kvcodec.KVCache, b: kvcodec.KVCache) -> None:
    assert a.num_layers == b.num_layers
    for x, y in zip(a, b):
        assert torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)
        assert torch.equal(x.positions, y.positions)
        assert (x.seen_tokens, x.layer_type, x.sliding_window) == (y.seen_tokens, y.layer_type, y.sliding_window)


def test_layer_ranges():
    assert stream.layer_ranges(30, 5) == [(0, 5), (5, 5), (10, 5), (15, 5), (20, 5), (25, 5)]
    assert stream.layer_ranges(7, 3) == [(0, 3), (3, 3), (6, 1)]
    assert stream.layer_ranges(2, 10) == [(0, 2)]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            stream.layer_ranges(4, bad)


@settings(max_examples=40)
@given(cache=kv_caches(max_layers=5, max_seq=12), data=st.data())
def test_round_trip_equals_the_unchunked_payload(cache, data):
    spec = data.draw(pipeline_specs(num_layers=cache.num_layers), label="spec")
    per = data.draw(st.integers(1, cache.num_layers + 1), label="layers_per_chunk")
    try:
        whole = kvcodec.decode(kvcodec.encode(cache, spec))
    except kvcodec.CodecError:
        return  # a group size that does not fit this cache: not a streaming matter
    chunks = stream.encode_chunks(cache, spec, per)
    assert len(chunks) == -(-cache.num_layers // per)
    _same_values(stream.decode_chunks(chunks), whole)
    assert stream.split_stream(b"".join(chunks)) == chunks
    # each chunk decodes alone into its own layers
    for k, chunk in enumerate(chunks):
        got = stream.decode_chunk(chunk)
        first, count = stream.layer_ranges(cache.num_layers, per)[k]
        assert (got.header.index, got.header.first_layer, got.header.layer_count) == (k, first, count)
        _same_values(got.cache, kvcodec.KVCache(list(whole)[first : first + count]))


def test_per_chunk_levels_and_global_layer_rules():
    cache = make_cache(seed=3, layers=7, seq=9, head_dim=16)
    levels = ["int8", "int4:axis=channel L4=fp16", "int3:axis=channel", "fp16"][: len(stream.layer_ranges(7, 2))]
    chunks = stream.encode_chunks(cache, levels, 2)
    got = list(stream.decode_chunks(chunks))
    for k, (first, count) in enumerate(stream.layer_ranges(7, 2)):
        ref = list(kvcodec.decode(kvcodec.encode(cache, levels[k])))
        for i in range(first, first + count):
            assert torch.equal(got[i].keys, ref[i].keys) and torch.equal(got[i].values, ref[i].values)
    # layer 4 sits in chunk 2 (int3): the L4=fp16 rule of chunk 1's pipeline does not reach it
    fp16 = kvcodec.decode(kvcodec.encode(cache, "fp16"))
    assert not torch.equal(got[4].keys, list(fp16)[4].keys)
    # with one pipeline for every chunk, L4 names the global layer 4
    chunks = stream.encode_chunks(cache, "int4:axis=channel L4=fp16", 2)
    assert torch.equal(list(stream.decode_chunks(chunks))[4].keys, list(fp16)[4].keys)
    with pytest.raises(ValueError, match="pipelines given"):
        stream.encode_chunks(cache, ["int8", "int8"], 2)


def test_sizes_and_overhead():
    cache = make_cache(seed=1, layers=6, seq=64, head_dim=32)
    whole = len(kvcodec.encode(cache, "int8"))
    chunks = stream.encode_chunks(cache, "int8", 2)
    assert len(chunks) == 3
    overhead = sum(map(len, chunks)) - whole
    assert 0 < overhead < 3 * (stream.CHUNK_HEADER_BYTES + 200)
    heads = [stream.read_chunk_header(c) for c in chunks]
    assert {h.stream_id for h in heads} == {zlib.crc32(chunks[0][stream.CHUNK_HEADER_BYTES:])}
    assert [h.size for h in heads] == list(map(len, chunks))
    assert stream.encode_chunks(cache, "int8", 2) == chunks  # deterministic
    assert stream.read_chunk_header(stream.encode_chunks(cache, "int8", 2, stream_id=7)[1]).stream_id == 7
    with pytest.raises(ValueError):
        stream.encode_chunks(cache, "int8", 2, stream_id=-1)


def test_stream_decoder_hands_out_layers_as_they_come():
    cache = make_cache(seed=2, layers=5, seq=8)
    chunks = stream.encode_chunks(cache, "int8", 2)
    dec = stream.StreamDecoder()
    seen = 0
    for chunk in chunks:
        assert not dec.complete
        with pytest.raises(DecodeError, match="incomplete"):
            dec.cache()
        seen += dec.feed(chunk).cache.num_layers
    assert dec.complete and seen == 5 and dec.cache().num_layers == 5
    with pytest.raises(DecodeError, match="extra chunk"):
        dec.feed(chunks[0])


# ----------------------------------------------------------------------------- untrusted chunks
def _mutate(chunks: list[bytes], kind: str, data) -> list[bytes]:
    out = list(chunks)
    k = data.draw(st.integers(0, len(out) - 1), label="chunk")
    if kind == "truncate":
        out[k] = out[k][: data.draw(st.integers(0, len(out[k]) - 1), label="length")]
    elif kind == "flip":
        pos = data.draw(st.integers(0, len(out[k]) - 1), label="byte")
        delta = data.draw(st.integers(1, 255), label="xor")
        out[k] = out[k][:pos] + bytes([out[k][pos] ^ delta]) + out[k][pos + 1 :]
    elif kind == "append":
        out[k] = out[k] + data.draw(st.binary(min_size=1, max_size=8), label="junk")
    elif kind == "duplicate":
        out.insert(data.draw(st.integers(0, len(out)), label="at"), out[k])
    elif kind == "missing":
        del out[k]
    elif kind == "reorder":
        j = data.draw(st.integers(0, len(out) - 1).filter(lambda j: j != k), label="other")
        out[k], out[j] = out[j], out[k]
    elif kind == "foreign":
        other = stream.encode_chunks(make_cache(seed=99, layers=len(chunks) * 1, seq=3), "int8", 1,
                                     stream_id=12345)
        out[k] = other[min(k, len(other) - 1)]
    return out


@settings(max_examples=150)
@given(cache=kv_caches(min_layers=2, max_layers=5, max_seq=10), data=st.data())
def test_untrusted_streams_raise_decode_error(cache, data):
    level = data.draw(st.sampled_from(("fp16", "int8", "int4:axis=channel", "int2")), label="level")
    per = data.draw(st.integers(1, cache.num_layers - 1), label="layers_per_chunk")
    chunks = stream.encode_chunks(cache, level, per)
    kind = data.draw(st.sampled_from(("truncate", "flip", "append", "duplicate", "missing", "reorder", "foreign")),
                     label="kind")
    bad = _mutate(chunks, kind, data)
    with pytest.raises(DecodeError):
        stream.decode_chunks(bad)
    if kind in ("truncate", "flip", "append"):
        with pytest.raises(DecodeError):
            stream.decode_chunks(stream.split_stream(b"".join(bad)))


@settings(max_examples=200)
@given(data=st.binary(max_size=80))
def test_garbage_never_crashes(data):
    for fn in (stream.decode_chunk, stream.split_stream, stream.read_chunk_header):
        try:
            fn(data)
        except DecodeError:
            pass


def test_header_checks():
    cache = make_cache(seed=0, layers=3, seq=4)
    chunk = stream.encode_chunks(cache, "int8", 1)[1]
    head, body = chunk[:24], chunk[28:]

    def forge(**fields) -> bytes:
        magic, ver, flags, index, count, first, layers, total, sid, length = struct.unpack("<4sBBHHHHHII", head)
        values = dict(magic=magic, ver=ver, flags=flags, index=index, count=count, first=first, layers=layers,
                      total=total, sid=sid, length=length)
        values.update(fields)
        new = struct.pack("<4sBBHHHHHII", *values.values())
        return new + struct.pack("<I", zlib.crc32(new)) + body

    assert stream.decode_chunk(forge()).header.index == 1
    for fields, message in (
        (dict(magic=b"KVCD"), "magic"), (dict(ver=2), "version"), (dict(flags=1), "flags"),
        (dict(index=3), "index"), (dict(count=0), "count"), (dict(total=0), "total"),
        (dict(first=3), "do not fit"), (dict(layers=0), "do not fit"), (dict(layers=2), "holds 1 layers"),
        (dict(length=len(body) + 1), "truncated"), (dict(length=len(body) - 1), "trailing"),
    ):
        with pytest.raises(DecodeError, match=message):
            stream.decode_chunk(forge(**fields))


def test_a_chunk_costs_the_same_bytes_whatever_the_other_chunks_levels():
    """The simulator prices an adaptive stream with per-level chunk sizes: a chunk's size
    depends only on its own level."""
    cache = make_cache(seed=5, layers=6, seq=20, head_dim=16)
    levels = ["int8", "int4:axis=channel", "fp16"]
    uniform = {lv: [len(c) for c in stream.encode_chunks(cache, lv, 2)] for lv in levels}
    for assignment in (["int8", "fp16", "int4:axis=channel"], ["fp16", "fp16", "int8"]):
        mixed = [len(c) for c in stream.encode_chunks(cache, assignment, 2)]
        assert mixed == [uniform[lv][k] for k, lv in enumerate(assignment)]
