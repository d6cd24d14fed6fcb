"""Every built-in codec passes the contract suite (``kvcodec.testing``).

The codecs come from the registry, so a built-in codec added later is tested without
editing this file: one with the default parameters of each, in the shortest spec that
can carry it (a CODES-accepting codec after ``int4``, a BYTES-accepting one after
``int4`` and a CODES → BYTES codec, a cache stage before ``identity``), plus the variants
in :data:`EXTRA_SPECS`. A codec may be left out only through :data:`SKIPPED`, with its
reason.
"""

from __future__ import annotations

import pytest

from kvcodec.codec import CacheStage, Form
from kvcodec.plugins import BUILTIN_PROVIDER, get_registry
from kvcodec.testing import CodecContract, Subject, kv_caches, standard_caches
from kvcodec.testing.checks import check_self_contained

#: built-in codec name → why the contract suite does not run on it. Empty: none is skipped.
SKIPPED: dict[str, str] = {}

#: more specs for some codecs: parameters whose code paths the defaults do not reach
EXTRA_SPECS: dict[str, list[str]] = {
    "int": ["int4:axis=channel,group=3", "int3:group=4,sym=true", "int16"],
    "sign": ["sign:axis=channel,group=5"],
}


def _builtins():
    reg = get_registry()
    return reg, sorted(n for n, info in reg.codecs.items() if info.provider == BUILTIN_PROVIDER)


def default_spec(name: str) -> str:
    """The shortest spec that carries the codec ``name`` with its default parameters.

    Raises:
        LookupError: if none can be built (add the codec to EXTRA_SPECS or SKIPPED).
    """
    reg, builtins = _builtins()
    cls = reg.get(name).cls
    if issubclass(cls, CacheStage):
        return f"{name} identity"
    if cls.accepts is Form.FLOAT:
        return name
    if cls.accepts is Form.CODES:
        return f"int4+{name}"
    producer = next((n for n in builtins if reg.get(n).cls.accepts is Form.CODES and reg.get(n).cls.produces is Form.BYTES), None)
    if cls.accepts is Form.BYTES and producer:
        return f"int4+{producer}+{name}"
    raise LookupError(f"no spec can carry {name!r}: add it to EXTRA_SPECS or SKIPPED")


def cases() -> list:
    """(spec, codec under test) for every built-in codec, as pytest params."""
    _, builtins = _builtins()
    out = []
    for name in builtins:
        if name in SKIPPED:
            out.append(pytest.param(name, name, id=name, marks=pytest.mark.skip(reason=SKIPPED[name])))
            continue
        for spec in [default_spec(name)] + EXTRA_SPECS.get(name, []):
            out.append(pytest.param(spec, name, id=spec))
    return out


CASES = cases()
CODEC_OF = {p.values[0]: p.values[1] for p in CASES}


class TestBuiltinContract(CodecContract):
    """The whole suite, once per case; the fresh-process check runs once for all cases
    (:func:`test_builtin_payloads_are_self_contained`)."""

    max_examples = 10  # × 14 specs; tests/test_quantizers.py draws hundreds for int and sign

    def drawn_caches(self):
        return kv_caches(max_layers=2, max_seq=16)

    @pytest.fixture(params=[p.values[0] for p in CASES], ids=[p.id for p in CASES])
    def kvcodec_spec(self, request) -> str:
        name = CODEC_OF[request.param]
        if name in SKIPPED:
            pytest.skip(SKIPPED[name])
        return request.param

    @pytest.fixture
    def kvcodec_codec(self, kvcodec_spec: str) -> str:
        return CODEC_OF[kvcodec_spec]

    def test_payload_is_self_contained(self, codec_subject):
        pytest.skip("checked for every built-in spec in one process: test_builtin_payloads_are_self_contained")


def test_builtin_payloads_are_self_contained():
    subjects = [Subject(spec, codec) for spec, codec in CODEC_OF.items() if codec not in SKIPPED]
    check_self_contained(subjects, standard_caches())


def test_every_builtin_codec_is_covered_and_every_skip_is_real():
    _, builtins = _builtins()
    assert {"int", "sign", "identity", "fp16"} <= set(builtins)
    assert set(CODEC_OF.values()) == set(builtins)
    for name, reason in SKIPPED.items():
        assert name in builtins, f"SKIPPED names {name!r}, which is not a built-in codec"
        assert len(reason.split()) >= 3, f"SKIPPED[{name!r}] needs a real reason"
    for name in EXTRA_SPECS:
        assert name in builtins, f"EXTRA_SPECS names {name!r}, which is not a built-in codec"


@pytest.mark.parametrize("spec", ["int4", "int8:axis=channel,sym=true", "int16", "sign", "fp16"])
def test_builtin_error_bounds_are_tight(spec):
    """A bound that is never approached catches nothing: on a realistic float32 cache the
    worst error reaches most of the declared bound (half a step is reached in the limit)."""
    import kvcodec
    from kvcodec.api import encode_payload
    from kvcodec.testing import make_cache

    cache = make_cache(seed=7, layers=1, heads=4, seq=64, head_dim=64, outliers=(3,), sink=8.0)
    payload = encode_payload(cache, spec)
    stage = payload.chains[0].stages[0]
    x = cache[0].keys
    bound = stage.error_bound(x, payload.layers[0].keys.sides[0])
    err = (kvcodec.decode(kvcodec.encode(cache, spec))[0].keys.double() - x.double()).abs()
    ratio = float((err / bound).max())
    assert 0.3 < ratio <= 1.0, ratio
