"""A pipeline: cache stages, then a chain per layer for keys and for values.

A :class:`Pipeline` is what a spec string (``specs/spec-grammar.md``) parses into. Rules
say which chain the keys or values of which layers go through; a rule naming layers wins
over a rule for all layers, and among rules of the same kind the later one wins.
"""

from __future__ import annotations

from typing import Literal

import attrs

from kvcodec.chain import Chain
from kvcodec.codec import CacheStage
from kvcodec.errors import CodecError

Kind = Literal["k", "v"]


@attrs.frozen
class Rule:
    """One clause of a spec: ``chain`` applies to ``kinds`` ("k", "v" or "kv") of
    ``layers`` (a tuple of layer indices, or ``None`` for every layer)."""

    chain: Chain
    kinds: str = "kv"
    layers: tuple[int, ...] | None = None

    def covers(self, layer: int, kind: Kind) -> bool:
        return kind in self.kinds and (self.layers is None or layer in self.layers)

    def describe(self) -> str:
        target = ""
        if self.layers is not None:
            target = "L" + _spans(self.layers) + ("" if self.kinds == "kv" else "." + self.kinds)
        elif self.kinds != "kv":
            target = self.kinds
        return (target + "=" if target else "") + self.chain.describe()


def _spans(layers: tuple[int, ...]) -> str:
    out, run = [], []
    for i in sorted(set(layers)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [i]
    out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


@attrs.frozen
class Pipeline:
    """Cache stages (applied to the whole cache, in order) and per-layer chain rules.

    Build one with :meth:`parse` from a spec string, or directly.
    """

    rules: tuple[Rule, ...] = attrs.field(converter=tuple)
    cache_stages: tuple[CacheStage, ...] = attrs.field(default=(), converter=tuple)

    @classmethod
    def parse(cls, text: str) -> "Pipeline":
        """Parse a spec string (see ``specs/spec-grammar.md``).

        Raises:
            SpecError: one line naming the offending part and its column.
        """
        from kvcodec.spec import parse

        return parse(text)

    def chain_for(self, layer: int, kind: Kind) -> Chain:
        """The chain for ``kind`` ("k" or "v") of layer ``layer``.

        Raises:
            CodecError: if no rule covers it.
        """
        for scoped in (True, False):
            for rule in reversed(self.rules):
                if (rule.layers is not None) == scoped and rule.covers(layer, kind):
                    return rule.chain
        raise CodecError(f"pipeline {self.describe()!r} has no chain for the {'keys' if kind == 'k' else 'values'}")

    def check(self, num_layers: int) -> None:
        """Check the pipeline against a cache of ``num_layers`` layers.

        Raises:
            CodecError: if a rule names a layer the cache does not have, or keys or values
                of some layer have no chain.
        """
        for rule in self.rules:
            bad = [i for i in rule.layers or () if i >= num_layers]
            if bad:
                raise CodecError(f"rule {rule.describe()!r} names layer {bad[0]} but the cache has {num_layers} layers")
        for kind in ("k", "v"):
            for layer in range(num_layers):
                self.chain_for(layer, kind)

    def describe(self) -> str:
        """Canonical spec string; ``Pipeline.parse(p.describe()) == p``."""
        parts = [s.describe() for s in self.cache_stages]
        parts += [rule.describe() for rule in self.rules]
        return " ".join(parts)

    def __str__(self) -> str:
        return self.describe()
