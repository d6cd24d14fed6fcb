"""The pipeline spec parser (``kvcodec.spec``): good specs parse to the right rules and
round-trip through ``describe()``; malformed specs raise :class:`SpecError` whose one-line
message quotes the offending fragment and its column; random text never raises anything
else; errors that depend on the cache (group sizes, layer numbers) surface at encode time
as :class:`CodecError`."""

from __future__ import annotations

import pytest
from conftest import make_cache, pipeline_specs
from hypothesis import given, settings
from hypothesis import strategies as st

import kvcodec
from kvcodec import CodecError, Pipeline, SpecError
from kvcodec.pipeline import Rule
from kvcodec.spec import parse

GOOD = {
    "int4": "int4",
    "int8": "int8",
    "int:bits=4": "int4",
    "int4:axis=channel": "int4:axis=channel",
    "k=int4:axis=channel v=int2": "k=int4:axis=channel v=int2",
    "int4:axis=channel L0=fp16": "int4:axis=channel L0=fp16",
    "int8:group=32,sym=true": "int8:group=32,sym=true",
    "int8:sym=yes": "int8:sym=true",
    "int8:sym=off": "int8",
    "int8:axis=token,group=0,sym=false": "int8",
    "L0-3,29.k=int8 int4": "L0-3,29.k=int8 int4",
    "L3,2,1,0=fp16 int4": "L0-3=fp16 int4",
    "kv=sign": "sign",
    "fp16+int4": "fp16+int4",
    "identity": "identity",
    "int16": "int16",
    "sign:axis=channel,group=5": "sign:axis=channel,group=5",
    "  int4\t; v=int2\n": "int4 v=int2",
    "v=int2 k=int4": "v=int2 k=int4",
    "L0.v=identity L1.k=sign int3": "L0.v=identity L1.k=sign int3",
}


@pytest.mark.parametrize(("spec", "canonical"), GOOD.items())
def test_good_specs_parse_and_describe_canonically(spec, canonical):
    p = Pipeline.parse(spec)
    assert p.describe() == canonical
    assert Pipeline.parse(p.describe()) == p
    assert str(p) == canonical
    assert parse(spec) == p


def test_parsed_structure():
    p = Pipeline.parse("k=int4:axis=channel v=int2 L0-2,5.k=fp16 L1.v=identity")
    assert p.cache_stages == ()
    kinds = [(r.kinds, r.layers, r.chain.describe()) for r in p.rules]
    assert kinds == [
        ("k", None, "int4:axis=channel"),
        ("v", None, "int2"),
        ("k", (0, 1, 2, 5), "fp16"),
        ("v", (1,), "identity"),
    ]
    q = p.rules[0].chain.stages[0]
    assert (q.name, q.bits, q.axis, q.group, q.sym) == ("int", 4, "channel", 0, False)
    assert [p.chain_for(i, "k").describe() for i in range(7)] == ["fp16"] * 3 + ["int4:axis=channel", "int4:axis=channel", "fp16", "int4:axis=channel"]
    assert [p.chain_for(i, "v").describe() for i in range(3)] == ["int2", "identity", "int2"]


def test_rule_precedence():
    # a rule naming layers wins over a rule for all layers, whatever the order
    assert Pipeline.parse("L0=fp16 int4").chain_for(0, "k").describe() == "fp16"
    assert Pipeline.parse("int4 L0=fp16").chain_for(0, "k").describe() == "fp16"
    # among rules of the same kind the later one wins
    assert Pipeline.parse("int4 int8").chain_for(3, "v").describe() == "int8"
    assert Pipeline.parse("int4 L0=fp16 L0.k=sign").chain_for(0, "k").describe() == "sign"
    assert Pipeline.parse("int4 L0=fp16 L0.k=sign").chain_for(0, "v").describe() == "fp16"
    assert Pipeline.parse("int4 v=int2").chain_for(0, "v").describe() == "int2"
    assert Pipeline.parse("int4 v=int2").chain_for(0, "k").describe() == "int4"


@given(spec=pipeline_specs(num_layers=6))
@settings(max_examples=300)
def test_generated_specs_round_trip(spec):
    p = Pipeline.parse(spec)
    text = p.describe()
    q = Pipeline.parse(text)
    assert q == p
    assert q.describe() == text
    for layer in range(6):
        for kind in "kv":
            assert q.chain_for(layer, kind) == p.chain_for(layer, kind)


@given(spec=pipeline_specs(num_layers=3))
@settings(max_examples=25)
def test_generated_specs_encode(spec):
    cache = make_cache(layers=3, heads=1, seq=5, head_dim=8)
    out = kvcodec.decode(kvcodec.encode(cache, spec))
    assert out.num_layers == 3


# (spec, column, fragment, words in the reason)
BAD = [
    ("int9", 0, "int9", "bits must be one of 2, 3, 4, 5, 6, 7, 8, 16 (got 9)"),
    ("int1", 0, "int1", "for 1 bit use 'sign'"),
    ("int4:axis=chanel", 5, "axis=chanel", "'chanel'"),
    ("int4:axis", 5, "axis", "key=value"),
    ("int4:", 5, "", "key=value"),
    ("int4:=3", 5, "=3", "key=value"),
    ("k=", 2, "", "missing stage"),
    ("v=int2 k=", 9, "", "missing stage"),
    ("L0=fp16", 0, "L0=fp16", "no chain covers the keys of every layer"),
    ("k=int4", 0, "k=int4", "no chain covers the values of every layer"),
    ("foo", 0, "foo", "unknown codec; installed:"),
    ("int4 foo:x=1", 5, "foo", "unknown codec"),
    ("Int4", 0, "Int4", "expected a stage name"),
    ("int4+int8", 0, "int4+int8", "accepts float but"),
    ("int4+fp16", 0, "int4+fp16", "accepts float but"),
    ("int4+", 5, "+", "expected a stage name"),
    ("+int4", 0, "+", "expected a stage name"),
    ("", 0, "", "empty spec"),
    ("   ", 0, "   ", "empty spec"),
    ("int4:bits=8", 5, "bits=8", "given twice"),
    ("int4:axis=token,axis=channel", 16, "axis=channel", "given twice"),
    ("sign:bits=2", 5, "bits=2", "'sign' has no parameter 'bits'"),
    ("identity:bits=4", 9, "bits=4", "has no parameter 'bits'"),
    ("int4:sym=maybe", 5, "sym=maybe", "expected true or false"),
    ("int4:group=x", 5, "group=x", "expected an integer"),
    ("int4:group=1.5", 5, "group=1.5", "expected an integer"),
    ("int4:group=-1", 5, "group=-1", "group"),
    ("int4 k=int8:group=x", 12, "group=x", "expected an integer"),
    ("int4 Lx=fp16", 5, "Lx", "unknown target"),
    ("int4 q=fp16", 5, "q", "unknown target"),
    ("int4 L=fp16", 5, "L", "unknown target"),
    ("int4 L0.kv=fp16", 5, "L0.kv", "unknown target"),
    ("int4 L0-=fp16", 6, "0-", "layers are written like"),
    ("int4 L0,,1=fp16", 8, "", "layers are written like"),
    ("int4 L5-2=fp16", 6, "5-2", "bad layer range"),
    ("int4 L0-5000=fp16", 6, "0-5000", "bad layer range"),
    ("fp16 k", 5, "k", "unknown codec"),
]


@pytest.mark.parametrize(("spec", "column", "fragment", "words"), BAD)
def test_malformed_specs(spec, column, fragment, words):
    with pytest.raises(SpecError) as info:
        Pipeline.parse(spec)
    err = info.value
    message = str(err)
    assert "\n" not in message
    assert (err.spec, err.column, err.fragment) == (spec, column, fragment), message
    assert f"at column {column} ({fragment!r})" in message
    assert message.startswith(f"bad pipeline spec {spec!r}")
    assert words in err.reason, message
    assert isinstance(err, ValueError) and isinstance(err, kvcodec.KVCodecError)


def test_huge_numbers_are_spec_errors():
    for spec in ("L" + "9" * 5000 + "=fp16 int8", "int" + "9" * 5000, "int4:group=" + "9" * 5000, "int99999999999"):
        with pytest.raises(SpecError):
            Pipeline.parse(spec)


def test_non_string_spec():
    with pytest.raises(TypeError, match="must be a str"):
        parse(b"int4")  # type: ignore[arg-type]


def test_encode_time_errors():
    cache64 = make_cache(layers=2, head_dim=64)
    Pipeline.parse("fp16+int4:group=3")  # fine at parse time: head_dim is not known yet
    with pytest.raises(CodecError, match="group size 3 does not divide head_dim 64"):
        kvcodec.encode(cache64, "fp16+int4:group=3")
    cache30 = make_cache(layers=30, heads=1, seq=2, head_dim=4)
    Pipeline.parse("L99=fp16 int4")
    with pytest.raises(CodecError, match="names layer 99 but the cache has 30 layers"):
        kvcodec.encode(cache30, "L99=fp16 int4")
    kvcodec.encode(cache30, "L29=fp16 int4")


def test_spec_errors_surface_from_encode():
    with pytest.raises(SpecError, match="column 0"):
        kvcodec.encode(make_cache(layers=1), "int9")


def test_pipeline_without_a_full_rule_is_a_codec_error_at_check():
    chain = Pipeline.parse("int4").rules[0].chain
    p = Pipeline([Rule(chain, "kv", (0,))])
    with pytest.raises(CodecError, match="no chain for the keys"):
        p.check(2)
    p.check(1)


SPEC_ALPHABET = st.sampled_from(list("intfpsgoychalewkvLx0123456789:=,+._- \t;\n") + ["int4", "fp16", "sign", "axis", "channel", "group", "sym", "true", "bits", "identity", "é", "\x00", "٣"])


@given(text=st.one_of(st.text(max_size=40), st.lists(SPEC_ALPHABET, max_size=25).map("".join)))
@settings(max_examples=1000)
def test_random_text_only_raises_spec_error(text):
    try:
        p = Pipeline.parse(text)
    except SpecError as err:
        assert 0 <= err.column <= len(text)
        assert "\n" not in str(err)  # one line: the spec is quoted with repr()
        return
    assert Pipeline.parse(p.describe()) == p


@pytest.mark.parametrize("spec", ["int4:axis=channel,group=99999999999999999999", "sign:group=9223372036854775808"])
def test_integer_parameters_must_fit_64_bits(spec):
    with pytest.raises(SpecError, match="64 bits"):
        Pipeline.parse(spec)
