"""Composition rules (``kvcodec/chain.py``, ``specs/spec-grammar.md`` §6): chains must go
FLOAT → (FLOAT → FLOAT)* → [→ CODES → (CODES → CODES)*] → [→ BYTES → (BYTES → BYTES)*].

Impossible chains are refused with one line that names both stages (as written in a spec)
and both forms, and says what to do; the same check guards payload headers, so a reader
rejects a chain no writer could have produced. Every built-in family is registered like
a third-party plugin and composes with the quantizers.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_cache

import kvcodec
from kvcodec import SpecError, wire
from kvcodec.chain import Chain, check_composition
from kvcodec.errors import DecodeError
from kvcodec.plugins import BUILTIN_PROVIDER, get_registry

# (chain, stage named first, its form, the stage before it or the input, the form it gives, hint)
IMPOSSIBLE = [
    ("int4+pca:rank=4", "'pca:rank=4' accepts float", "'int4' before it gives codes", "before the quantizer"),
    ("int4+delta", "'delta' accepts float", "'int4' before it gives codes", "before the quantizer"),
    ("int4+fp16", "'fp16' accepts float", "'int4' before it gives codes", "before the quantizer"),
    ("zstd+int4", "'zstd' accepts codes", "the chain's input (a layer's keys or values) is float", "quantizer"),
    ("ans", "'ans' accepts codes", "the chain's input (a layer's keys or values) is float", "put a quantizer"),
    ("cdelta+int4", "'cdelta' accepts codes", "input (a layer's keys or values) is float", "put a quantizer"),
    ("fp16+ans:context=channel", "'ans:context=channel' accepts codes", "'fp16' before it gives float", "put a quantizer"),
    ("pca:rank=8+zstd", "'zstd' accepts codes", "'pca:rank=8' before it gives float", "put a quantizer"),
    ("int4+ans+delta", "'delta' accepts float", "'ans' before it gives bytes", "bytes → bytes"),
    ("int4+zstd+int8", "'int8' accepts float", "'zstd' before it gives bytes", "bytes → bytes"),
    ("int4+ans+zstd", "'zstd' accepts codes", "'ans' before it gives bytes", "bytes → bytes"),
    ("int4+zstd+cdelta", "'cdelta' accepts codes", "'zstd' before it gives bytes", "bytes → bytes"),
    ("int4+int8", "'int8' accepts float", "'int4' before it gives codes", "before the quantizer"),
]


@pytest.mark.parametrize("chain, first, second, hint", IMPOSSIBLE)
def test_impossible_chains_name_both_stages_and_forms(chain, first, second, hint):
    with pytest.raises(SpecError) as info:
        kvcodec.Pipeline.parse(chain)
    message = str(info.value)
    assert "\n" not in message
    assert first in message and second in message and hint in message
    assert info.value.column == 0 and info.value.fragment == chain


def test_the_error_points_at_the_clause_that_does_not_compose():
    with pytest.raises(SpecError) as info:
        kvcodec.Pipeline.parse("k=int4:axis=channel+ans v=int4+pca:rank=2")
    assert info.value.column == 26 and info.value.fragment == "int4+pca:rank=2"


def test_space_separates_rules_not_stages():
    """`int4 ans` is two rules, the second a chain of `ans` alone: refused, and the message
    says why (write `int4+ans`)."""
    with pytest.raises(SpecError, match="'ans' accepts codes but the chain's input"):
        kvcodec.Pipeline.parse("int4 ans")
    assert kvcodec.Pipeline.parse("int4+ans").describe() == "int4+ans"


POSSIBLE = [
    "int4+ans",
    "int4:axis=channel+cdelta+ans",
    "delta:mode=anchor,group=16+int4",
    "pca:rank=16+int8",
    "int4+zstd",
    "identity+delta:mode=seq+pca:rank=4+fp16+int4:axis=channel+cdelta:mode=seq+cdelta+ans:context=tensor",
    "pca",
    "delta",
    "sign+cdelta+zstd:level=19",
]


@pytest.mark.parametrize("spec", POSSIBLE)
def test_possible_chains_parse_and_keep_their_canonical_form(spec):
    p = kvcodec.Pipeline.parse(spec)
    assert kvcodec.Pipeline.parse(p.describe()) == p
    cache = make_cache(seed=0, layers=2, heads=2, seq=20, head_dim=16)
    out = kvcodec.decode(kvcodec.encode(cache, spec))
    assert [l.keys.shape for l in out] == [l.keys.shape for l in cache]


def test_check_composition_directly():
    reg = get_registry()
    ans, int4 = reg.get("ans").cls(), reg.get("int").cls(bits=4)
    check_composition([int4, ans])
    with pytest.raises(ValueError, match="'int4' accepts float but 'ans' before it gives bytes"):
        check_composition([int4, ans, int4])
    with pytest.raises(ValueError, match="at least one stage"):
        Chain([])


def test_a_header_with_an_impossible_chain_is_rejected():
    """A reader applies the same rule to the chain table (wire-format.md §4.2)."""
    reg = get_registry()
    w = wire._Writer()
    w.u32(1)  # batch
    w.u16(1)  # layers
    w.u8(0)  # cache stages
    w.u16(1)  # chains
    w.u8(2)
    w.stage(reg.get("ans").cls())
    w.stage(reg.get("int").cls(bits=4))
    import struct
    import zlib

    pre = wire.PREAMBLE.pack(wire.MAGIC, wire.MAJOR, wire.MINOR, 0, len(w.buf))
    data = pre + bytes(w.buf) + struct.pack("<I", zlib.crc32(pre + bytes(w.buf)))
    with pytest.raises(DecodeError, match="impossible chain: 'ans' accepts codes"):
        wire.load_header(data)


@pytest.mark.parametrize(
    "name, family, accepts, produces, lossless",
    [
        ("delta", "transform", "float", "float", False),
        ("cdelta", "transform", "codes", "codes", True),
        ("pca", "transform", "float", "float", False),
        ("ans", "entropy", "codes", "bytes", True),
        ("zstd", "entropy", "codes", "bytes", True),
    ],
)
def test_builtin_families_are_registered_as_plugins(name, family, accepts, produces, lossless):
    info = get_registry().get(name)
    assert info is not None and info.provider == BUILTIN_PROVIDER
    assert info.plugin.startswith("kvcodec_builtins.")
    cls = info.cls
    assert (cls.family, cls.accepts.value, cls.produces.value, cls.lossless) == (family, accepts, produces, lossless)
    stage = cls()  # every parameter has a working default
    assert kvcodec.Pipeline.parse(stage.describe() if accepts == "float" else f"int4+{stage.describe()}")


def test_entropy_stage_after_a_lossy_float_stage_keeps_its_output_exact():
    """`delta+int4+ans` decodes to exactly what `delta+int4` does."""
    cache = make_cache(seed=1, layers=2, heads=2, seq=24, head_dim=8)
    a = kvcodec.decode(kvcodec.encode(cache, "delta+int4+ans"))
    b = kvcodec.decode(kvcodec.encode(cache, "delta+int4"))
    for x, y in zip(a, b):
        assert torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)


def test_a_chain_decodes_on_the_device_of_its_side_information():
    """Entropy decoders return codes on the host; the chain hands them to the next stage on
    the device its side information was moved to (``kvcodec.decode(..., device=…)``)."""
    import attrs

    from kvcodec.codec import Codes, Form, TensorStage

    seen = []

    @attrs.frozen
    class Probe(TensorStage):
        name = "probe_t"
        family = "quantizer"
        accepts = Form.FLOAT
        produces = Form.CODES

        def encode(self, x):
            return Codes(torch.zeros(x.shape, dtype=torch.uint8), 4), {"s": torch.zeros(1)}

        def decode(self, y, side):
            seen.append((y.data.device, side["s"].device))
            return torch.zeros(y.data.shape, device=y.data.device)

    ans = get_registry().get("ans").cls()
    chain = Chain([Probe(), ans])
    data, sides = chain.encode(torch.zeros(1, 2, 3, 4))
    meta = torch.device("meta")
    out = chain.decode(data, [{"s": sides[0]["s"].to(meta)}, {}])
    assert seen == [(meta, meta)] and out.device == meta
