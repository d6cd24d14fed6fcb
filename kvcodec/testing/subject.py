"""What a contract run tests: a pipeline spec string, the codec in it under test, and the
registry that resolves its names (installed plugins, plus any stage classes registered
on the spot)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from kvcodec import api, wire
from kvcodec.cache import KVCache
from kvcodec.codec import CacheStage, Stage, TensorStage
from kvcodec.pipeline import Pipeline
from kvcodec.plugins import CodecInfo, Registry, get_registry
from kvcodec.spec import parse

from .timeouts import call_with_timeout

__all__ = ["Subject", "registry_with", "UNINSTALLED_PROVIDER"]

#: the provider shown for stage classes registered by :func:`registry_with`
UNINSTALLED_PROVIDER = "kvcodec.testing (not installed)"


def registry_with(*classes: type[Stage], base: Registry | None = None) -> Registry:
    """The installed registry (or ``base``) plus ``classes``, as if a plugin had registered
    them: for testing a codec class before it is packaged, or a deliberately broken one.

    Raises:
        ValueError: if a class is not a stage class or its name is already taken.
    """
    base = base if base is not None else get_registry()
    codecs = dict(base.codecs)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, (TensorStage, CacheStage))):
            raise ValueError(f"{cls!r} is not a TensorStage or CacheStage class")
        name = getattr(cls, "name", None)
        if name in codecs and codecs[name].cls is not cls:
            raise ValueError(f"codec name {name!r} is already registered by {codecs[name].provider}")
        codecs[name] = CodecInfo(cls, UNINSTALLED_PROVIDER, cls.__module__)
    return Registry(codecs, base.loaded, base.failed)


class Subject:
    """A codec under test, as used in one pipeline.

    Args:
        spec: a pipeline spec string that uses the codec, e.g. ``"e4m3"``,
            ``"int4+deflate"`` or ``"snapkv:keep=8 identity"``.
        codec: the name of the codec under test; may be left out when ``spec`` names one
            codec only.
        extra_codecs: stage classes to register on the spot (not installed).
        context: keyword arguments for ``kvcodec.encode`` (cache stages read them).
        decode_timeout: seconds any single encode or decode may take before the contract
            calls it a hang.
        require_error_bound: a lossy stage that accepts FLOAT must declare
            :meth:`~kvcodec.codec.TensorStage.error_bound`.
        invalid_params: parameter texts (``"bits=1"``, ``"axis=row,group=2"``) that the
            codec must reject.
        cache_stage_keeps_values: a cache stage only drops tokens: the keys and values it
            keeps are the originals, bit for bit.

    Raises:
        SpecError: if ``spec`` does not parse.
        ValueError: if ``codec`` is not in ``spec`` or cannot be inferred.
    """

    def __init__(
        self,
        spec: str,
        codec: str | None = None,
        *,
        extra_codecs: Sequence[type[Stage]] = (),
        context: Mapping[str, Any] | None = None,
        decode_timeout: float = 10.0,
        require_error_bound: bool = True,
        invalid_params: Sequence[str] = (),
        cache_stage_keeps_values: bool = True,
    ):
        self.spec = spec
        self.extra_codecs = tuple(extra_codecs)
        self.registry = registry_with(*self.extra_codecs) if self.extra_codecs else get_registry()
        self.pipeline: Pipeline = parse(spec, self.registry)
        self.context = dict(context or {})
        self.decode_timeout = decode_timeout
        self.require_error_bound = require_error_bound
        self.invalid_params = tuple(invalid_params)
        self.cache_stage_keeps_values = cache_stage_keeps_values
        names = list(dict.fromkeys(s.name for s in self.all_stages()))
        if codec is None:
            if len(names) != 1:
                raise ValueError(f"spec {spec!r} uses the codecs {names}: say which one is under test (codec=…)")
            codec = names[0]
        if codec not in names:
            raise ValueError(f"codec {codec!r} does not appear in spec {spec!r} (it uses {names})")
        self.codec = codec
        self.info = self.registry.get(codec)
        self.stage: Stage = next(s for s in self.all_stages() if s.name == codec)

    def __repr__(self) -> str:
        return f"Subject({self.spec!r}, codec={self.codec!r})"

    # ----------------------------------------------------------------- the pipeline
    def all_stages(self) -> list[Stage]:
        """Cache stages, then the stages of every chain, in spec order (with repeats)."""
        out: list[Stage] = list(self.pipeline.cache_stages)
        for rule in self.pipeline.rules:
            out += rule.chain.stages
        return out

    def with_stage(self, replacement: Stage) -> "Pipeline":
        """The pipeline with every stage equal to :attr:`stage` replaced by ``replacement``."""
        import attrs

        def swap(s: Stage) -> Stage:
            return replacement if s == self.stage else s

        rules = [
            attrs.evolve(r, chain=attrs.evolve(r.chain, stages=[swap(s) for s in r.chain.stages]))
            for r in self.pipeline.rules
        ]
        return Pipeline(rules, [swap(s) for s in self.pipeline.cache_stages])

    def expected(self, cache: KVCache, pipeline: Pipeline | None = None) -> KVCache:
        """The cache the receiver should get back: ``cache`` after the cache stages."""
        for stage in (pipeline or self.pipeline).cache_stages:
            cache = stage.apply(cache, self.context)
        return cache

    # ----------------------------------------------------------------- timed calls
    def encode_payload(self, cache: KVCache, pipeline: Pipeline | None = None) -> wire.Payload:
        """``kvcodec.api.encode_payload`` under the time limit."""
        p = pipeline or self.pipeline
        return call_with_timeout(lambda: api.encode_payload(cache, p, **self.context), self.decode_timeout, f"encoding with {p}")

    def encode(self, cache: KVCache, pipeline: Pipeline | None = None) -> bytes:
        """``kvcodec.encode`` under the time limit."""
        p = pipeline or self.pipeline
        return call_with_timeout(lambda: api.encode(cache, p, **self.context), self.decode_timeout, f"encoding with {p}")

    def decode(self, data: bytes, device: torch.device | str | None = None) -> KVCache:
        """``kvcodec.decode`` under the time limit, with this subject's registry."""
        return call_with_timeout(
            lambda: api.decode(data, device=device, registry=self.registry),
            self.decode_timeout,
            f"decoding a {self.spec!r} payload",
        )

    def timed(self, fn, what: str):
        """``fn()`` under the time limit."""
        return call_with_timeout(fn, self.decode_timeout, what)
