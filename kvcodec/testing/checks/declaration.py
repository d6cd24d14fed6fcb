"""Check ``declaration``: the class is declared as ``specs/plugins.md`` §4.2 requires."""

from __future__ import annotations

import attrs

from kvcodec.codec import CacheStage, Form, TensorStage

from ..subject import Subject
from ._common import NAME_RE, _fail


def check_declaration(subject: Subject) -> None:
    """The class is a frozen attrs stage class with a valid ``name``, ``family``,
    ``version``, forms, ``lossless`` flag and parameters (``specs/plugins.md`` §4.2), is
    registered under its name, builds with all defaults, compares and hashes by its
    parameters, and — if lossy and accepting FLOAT — declares an error bound."""
    c = "declaration"
    cls = subject.info.cls
    name = cls.name
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name.encode()) > 255:
        raise _fail(c, subject, f"name {name!r} must match [a-z_][a-z0-9_]* and be at most 255 bytes")
    if not isinstance(getattr(cls, "family", None), str) or not cls.family:
        raise _fail(c, subject, "family must be a non-empty str (quantizer, selector, transform, entropy, cast …)")
    version = getattr(cls, "version", None)
    if type(version) is not int or not 1 <= version <= 65535:
        raise _fail(c, subject, f"version must be an int in 1 … 65535, got {version!r}")
    if not isinstance(cls.accepts, Form) or not isinstance(cls.produces, Form):
        raise _fail(c, subject, "accepts and produces must be kvcodec.Form members")
    if issubclass(cls, CacheStage):
        if cls.accepts is not Form.CACHE or cls.produces is not Form.CACHE:
            raise _fail(c, subject, "a cache stage accepts and produces Form.CACHE")
        if cls.apply is CacheStage.apply:
            raise _fail(c, subject, "a cache stage must implement apply(cache, context)")
    else:
        if Form.CACHE in (cls.accepts, cls.produces):
            raise _fail(c, subject, "a tensor stage cannot accept or produce Form.CACHE")
        if cls.encode is TensorStage.encode or cls.decode is TensorStage.decode:
            raise _fail(c, subject, "a tensor stage must implement encode(x) and decode(y, side)")
    if not isinstance(cls.lossless, bool):
        raise _fail(c, subject, f"lossless must be a bool, got {cls.lossless!r}")
    if not attrs.has(cls):
        raise _fail(c, subject, "the class must be an attrs class (@attrs.frozen)")
    try:
        types = cls.param_types()
    except TypeError as exc:
        raise _fail(c, subject, str(exc)) from None
    for field in attrs.fields(cls):
        if not NAME_RE.match(field.name):
            raise _fail(c, subject, f"parameter name {field.name!r} must match [a-z_][a-z0-9_]*")
        if field.default is attrs.NOTHING:
            raise _fail(c, subject, f"parameter {field.name!r} has no default")
    if getattr(cls, "bits_in_name", False) and types.get("bits") is not int:
        raise _fail(c, subject, "bits_in_name needs an int parameter named 'bits'")
    if subject.registry.get(name) is None or subject.registry.get(name).cls is not cls:
        raise _fail(c, subject, f"the registry does not map {name!r} to {cls.__qualname__}")
    try:
        default = cls()
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        raise _fail(c, subject, f"cannot be built with its defaults: {type(exc).__name__}: {exc}") from None
    stage = subject.stage
    twin = cls(**stage.params())
    if twin != stage or hash(twin) != hash(stage):
        raise _fail(c, subject, "two stages with equal parameters must be equal and hash alike (frozen attrs class)")
    fields = attrs.fields(cls)
    if fields:
        try:
            setattr(default, fields[0].name, getattr(default, fields[0].name))
        except (attrs.exceptions.FrozenInstanceError, AttributeError):
            pass
        else:
            raise _fail(c, subject, "stages must be immutable: use @attrs.frozen")
    if (
        issubclass(cls, TensorStage)
        and not cls.lossless
        and cls.accepts is Form.FLOAT
        and subject.require_error_bound
        and cls.error_bound is TensorStage.error_bound
    ):
        raise _fail(
            c,
            subject,
            "a lossy stage that accepts FLOAT must declare error_bound(x, side) (specs/plugins.md §4.6),"
            " or the contract must be told require_error_bound = False",
        )
