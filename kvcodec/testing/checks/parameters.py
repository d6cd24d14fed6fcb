"""Check ``parameters``: bad values are refused, accepted ones work, parameters survive
spec text and the wire."""

from __future__ import annotations

import math
from typing import Any

from kvcodec import wire
from kvcodec.cache import KVCache
from kvcodec.codec import Stage
from kvcodec.errors import CodecError, DecodeError
from kvcodec.spec import build_stage, convert

from ..subject import Subject
from ..timeouts import TimeLimitExceeded
from ._common import ContractViolation, Unencodable, _encode_payload, _fail
from .accuracy import _compare_accuracy
from .round_trip import _compare_structure


def _probes(typ: type) -> list[Any]:
    if typ is bool:
        return [True, False]
    if typ is int:
        return [-1, 0, 1, 2, 3, 7, 64, 1000, 2**31, -(2**63), 2**63 - 1]
    if typ is float:
        return [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-300, 0.5, 3.0, 1e300]
    return ["", "?", "no_such_value", "x" * 300]


def _same_param(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def check_parameters(subject: Subject, cache: KVCache) -> None:
    """Parameters are validated, and every value the codec accepts works.

    - the pipeline survives its spec text: ``parse(p.describe()) == p``, and the wire:
      the stages read back from a payload's header equal the ones that wrote it;
    - each text in ``subject.invalid_params`` is rejected (``ValueError`` from the class
      and from ``from_params``, which the spec parser and the wire reader report as
      ``SpecError`` / ``DecodeError``);
    - probe values of each parameter's type (negative, zero, huge, NaN, ±inf, empty and
      unknown strings) are either rejected with ``ValueError`` or ``TypeError`` at
      construction, or accepted and then work: encoding ``cache`` succeeds or raises
      ``CodecError``, and what it writes decodes with the right geometry and within the
      declared accuracy.
    """
    c = "parameters"
    cls, stage = subject.info.cls, subject.stage
    from kvcodec.spec import parse

    text = subject.pipeline.describe()
    if parse(text, subject.registry) != subject.pipeline:
        raise _fail(c, subject, f"the pipeline does not survive its spec text {text!r} (describe() / parse disagree)")
    try:
        sent = _encode_payload(subject, cache)
    except Unencodable:
        sent = None
    if sent is not None:
        header = wire.load_header(wire.dump(sent), subject.registry)
        if header.cache_stages != sent.cache_stages or header.chains != sent.chains:
            raise _fail(c, subject, "the stages read back from the payload header differ from those that wrote it")
    types = cls.param_types()
    for item in subject.invalid_params:
        params = dict(stage.params())
        for pair in item.split(","):
            key, _, value = pair.partition("=")
            if key not in types:
                raise ValueError(f"invalid_params: {cls.name!r} has no parameter {key!r}")
            try:
                params[key] = convert(value, types[key])
            except ValueError:
                params = None  # the spec grammar already refuses the text
                break
        if params is None:
            continue
        try:
            build_stage(cls, params)
        except ValueError:
            pass
        else:
            raise _fail(c, subject, f"accepts the invalid parameters {item!r}; its validators must reject them")
        try:
            cls.from_params(params, cls.version)
        except (ValueError, TypeError):
            pass
        else:
            raise _fail(c, subject, f"from_params accepts the invalid parameters {item!r} (a payload could carry them)")
    base = stage.params()
    for key, typ in types.items():
        for value in _probes(typ):
            if _same_param(value, base[key]):
                continue
            try:
                probe = cls(**{**base, key: value})
            except (ValueError, TypeError):
                continue
            except Exception as exc:  # noqa: BLE001 - the finding
                raise _fail(
                    c,
                    subject,
                    f"{key}={value!r}: the constructor raised {type(exc).__name__}: {exc}; validators raise ValueError",
                ) from None
            _check_accepted_probe(subject, cache, probe, f"{key}={value!r}")


def _check_accepted_probe(subject: Subject, cache: KVCache, probe: Stage, label: str) -> None:
    c = "parameters"
    pipeline = subject.with_stage(probe)
    try:
        data = subject.encode(cache, pipeline)
    except CodecError:
        return
    except TimeLimitExceeded as exc:
        raise _fail(c, subject, f"{label} is accepted, but then: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the finding
        raise _fail(
            c,
            subject,
            f"{label} is accepted by the constructor, but encoding then raised {type(exc).__name__}: {exc};"
            " reject the value in a validator (ValueError) or raise CodecError",
        ) from None
    try:
        out = subject.decode(data)
    except (DecodeError, TimeLimitExceeded) as exc:
        raise _fail(c, subject, f"{label} is accepted, but its own payload does not decode: {exc}") from None
    expected = subject.expected(cache, pipeline)
    try:
        _compare_structure("parameters", subject, expected, out, None)
        _compare_accuracy(subject, expected, out, subject.encode_payload(cache, pipeline))
    except ContractViolation as exc:
        raise _fail(c, subject, f"{label} is accepted but does not work: {exc}") from None
