"""Parse pipeline spec strings (grammar: ``specs/spec-grammar.md``).

Examples::

    int4                                 INT4 per-token, asymmetric, keys and values
    int4:axis=channel                    INT4 per-channel
    k=int4:axis=channel v=int2           KIVI-style split: keys per-channel, values per-token
    int4:axis=channel L0=fp16            mixed precision: layer 0 in FP16, the rest INT4
    int8:group=32,sym=true               symmetric INT8 over groups of 32 channels
    L0-3,29.k=int8                       keys of layers 0–3 and 29 in INT8 (needs another rule)

Parsing never evaluates code; a malformed spec raises :class:`~kvcodec.errors.SpecError`
whose one-line message quotes the offending part and its column.
"""

from __future__ import annotations

import math
import re
from typing import Any

from kvcodec.chain import Chain
from kvcodec.codec import CacheStage, Stage
from kvcodec.errors import SpecError
from kvcodec.pipeline import Pipeline, Rule
from kvcodec.plugins import Registry, get_registry

_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")
_SHORTHAND = re.compile(r"([a-z_][a-z0-9_]*?)([0-9]{1,6})\Z")  # bounded: int() of a huge digit run raises
_TARGET = re.compile(r"(?:(kv|k|v)|L([0-9,\-]+)(?:\.(k|v))?)\Z")
_SPAN = re.compile(r"([0-9]{1,6})(?:-([0-9]{1,6}))?\Z")
MAX_LAYER = 4095


def _tokens(text: str, seps: str, start: int) -> list[tuple[int, str]]:
    """Split ``text`` on any character of ``seps``; return (absolute column, piece) pairs."""
    out, col, piece = [], start, ""
    for i, ch in enumerate(text):
        if ch in seps:
            out.append((col, piece))
            col, piece = start + i + 1, ""
        else:
            piece += ch
    out.append((col, piece))
    return out


def convert(value: str, typ: type) -> Any:
    """Convert a parameter's text to ``typ`` (bool, int, float or str).

    Raises:
        ValueError: with a short reason.
    """
    if typ is bool:
        low = value.lower()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if typ is int:
        if not re.fullmatch(r"-?[0-9]{1,19}", value) or not -(2**63) <= int(value) < 2**63:
            raise ValueError(f"expected an integer that fits in 64 bits, got {value[:40]!r}")
        return int(value)
    if typ is float:
        try:
            out = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(out):
            raise ValueError(f"expected a finite number, got {value!r}")
        return out
    return value


def build_stage(cls: type[Stage], params: dict[str, Any]) -> Stage:
    """Instantiate ``cls`` with typed ``params``.

    Raises:
        ValueError: naming an unknown parameter or repeating the class's validation error.
    """
    known = cls.param_types()
    for key in params:
        if key not in known:
            raise ValueError(f"{cls.name!r} has no parameter {key!r}; it takes {', '.join(known) or 'none'}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        # attrs validators raise ValueError(message, attribute, …): keep the message and
        # name the field so a parser can point at it
        message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        field = getattr(exc.args[1], "name", None) if len(exc.args) > 1 else None
        field = field or next((k for k in params if f"'{k}'" in message), None)
        raise StageParamError(message, field) from None


class StageParamError(ValueError):
    """A stage rejected its parameters; ``field`` names the offending one when known."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class _Parser:
    def __init__(self, text: str, registry: Registry):
        self.text = text
        self.registry = registry

    def fail(self, column: int, fragment: str, reason: str) -> SpecError:
        return SpecError(self.text, column, fragment, reason)

    def parse(self) -> Pipeline:
        if not self.text.strip():
            raise self.fail(0, self.text, "empty spec; try 'int8' or 'k=int4:axis=channel v=int4'")
        rules: list[Rule] = []
        cache_stages: list[CacheStage] = []
        for col, clause in _tokens(self.text, " \t\n;", 0):
            if not clause:
                continue
            target, chain_col, chain_text = None, col, clause
            head = clause.split("=", 1)[0]
            if "=" in clause and ":" not in head:
                target, chain_text = head, clause[len(head) + 1 :]
                chain_col = col + len(head) + 1
            stages = self.chain(chain_col, chain_text)
            leading = 0
            while leading < len(stages) and isinstance(stages[leading][1], CacheStage):
                leading += 1
            for scol, stage in stages[leading:]:
                if isinstance(stage, CacheStage):
                    raise self.fail(scol, stage.name, f"{stage.family} {stage.name!r} works on the whole cache; put it first")
            if leading and target is not None:
                scol, stage = stages[0]
                raise self.fail(scol, stage.name, f"{stage.family} {stage.name!r} cannot be limited to {target!r}")
            cache_stages += [s for _, s in stages[:leading]]
            tensor = [s for _, s in stages[leading:]]
            if not tensor:
                if target is not None:
                    raise self.fail(col, clause, "a target needs a chain after '='")
                continue
            try:
                chain = Chain(tensor)
            except ValueError as exc:
                raise self.fail(chain_col, chain_text, str(exc)) from None
            kinds, layers = self.target(col, target)
            rules.append(Rule(chain, kinds, layers))
        pipeline = Pipeline(rules, cache_stages)
        for kind, label in (("k", "keys"), ("v", "values")):
            if not any(r.layers is None and kind in r.kinds for r in rules):
                raise self.fail(0, self.text, f"no chain covers the {label} of every layer; add e.g. '{kind}=int8'")
        return pipeline

    def target(self, col: int, target: str | None) -> tuple[str, tuple[int, ...] | None]:
        if target is None:
            return "kv", None
        m = _TARGET.match(target)
        if not m:
            raise self.fail(col, target, "unknown target; expected k, v, kv, L<layers> or L<layers>.k / .v")
        if m.group(1):
            return m.group(1), None
        layers: set[int] = set()
        for scol, span in _tokens(m.group(2), ",", col + 1):
            sm = _SPAN.match(span)
            if not sm:
                raise self.fail(scol, span, "layers are written like 0, 0-3 or 0,5-7")
            lo, hi = int(sm.group(1)), int(sm.group(2) or sm.group(1))
            if hi < lo or hi > MAX_LAYER:
                raise self.fail(scol, span, f"bad layer range (0 ≤ first ≤ last ≤ {MAX_LAYER})")
            layers.update(range(lo, hi + 1))
        return m.group(3) or "kv", tuple(sorted(layers))

    def chain(self, col: int, text: str) -> list[tuple[int, Stage]]:
        if not text:
            raise self.fail(col, text, "missing stage")
        return [(scol, self.stage(scol, piece)) for scol, piece in _tokens(text, "+", col)]

    def stage(self, col: int, text: str) -> Stage:
        name, colon, rest = text.partition(":")
        if not _NAME.match(name):
            raise self.fail(col, text or "+", "expected a stage name like int4, fp16 or identity")
        params: dict[str, Any] = {}
        info = self.registry.get(name)
        if info is None:
            m = _SHORTHAND.match(name)
            base = self.registry.get(m.group(1)) if m else None
            if base is None or "bits" not in base.cls.param_types():
                known = ", ".join(self.registry.names())
                raise self.fail(col, name, f"unknown codec; installed: {known}")
            info, params["bits"] = base, int(m.group(2))
        types = info.cls.param_types()
        pcol = col + len(name) + 1
        columns: dict[str, tuple[int, str]] = {}
        for kcol, item in (_tokens(rest, ",", pcol) if colon else []):
            key, eq, value = item.partition("=")
            if not eq or not _NAME.match(key) or not value:
                raise self.fail(kcol, item, "parameters are written key=value")
            if key not in types:
                raise self.fail(kcol, item, f"{info.name!r} has no parameter {key!r}; it takes {', '.join(types)}")
            if key in params:
                raise self.fail(kcol, item, f"parameter {key!r} given twice")
            try:
                params[key] = convert(value, types[key])
            except ValueError as exc:
                raise self.fail(kcol, item, f"{key}: {exc}") from None
            columns[key] = (kcol, item)
        try:
            return build_stage(info.cls, params)
        except StageParamError as exc:
            kcol, item = columns.get(exc.field or "", (col, text))
            raise self.fail(kcol, item, str(exc)) from None


def parse(text: str, registry: Registry | None = None) -> Pipeline:
    """Parse ``text`` into a :class:`~kvcodec.pipeline.Pipeline`.

    Raises:
        SpecError: for a malformed spec; the message quotes the offending part and column.
    """
    if not isinstance(text, str):
        raise TypeError(f"a spec must be a str, got {type(text).__name__}")
    return _Parser(text, registry or get_registry()).parse()
