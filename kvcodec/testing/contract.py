"""The codec contract suite for pytest: :class:`CodecContract` (without pytest:
:func:`kvcodec.testing.run_contract`).

A plugin author tests a codec with a few lines::

    from kvcodec.testing import CodecContract

    class TestE4M3(CodecContract):
        spec = "e4m3"                       # a pipeline spec string using the codec

    class TestE4M3PerChannel(CodecContract):
        spec = "k=e4m3:axis=channel v=e4m3"
        invalid_params = ("axis=row",)      # values the codec must refuse

Every test method runs one check of :mod:`kvcodec.testing.checks` on a fixed set of small
caches (:func:`~kvcodec.testing.caches.standard_caches`) and, for the checks that are
cheap per cache, on ``max_examples`` caches drawn by hypothesis
(:func:`~kvcodec.testing.strategies.kv_caches`).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Sequence

import pytest
import torch

from kvcodec.cache import KVCache
from kvcodec.codec import Stage, TensorStage

from .caches import standard_caches
from .checks import (
    ContractViolation,
    NotApplicable,
    Unencodable,
    accuracy_not_applicable,
    check_accuracy,
    check_byte_count,
    check_cache_stage,
    check_corruption,
    check_damaged_input,
    check_declaration,
    check_deterministic,
    check_forms,
    check_non_finite,
    check_parameters,
    check_round_trip,
    check_self_contained,
    check_truncation,
)
from .report import FUZZ_CACHES
from .strategies import HEAD_DIMS, kv_caches
from .subject import Subject

__all__ = ["CodecContract", "default_devices"]


def default_devices() -> tuple[str, ...]:
    """``("cpu",)``, plus ``"cuda"`` when a CUDA device is present."""
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


# ----------------------------------------------------------------------------- pytest
class CodecContract:
    """Base class of a pytest test class that checks a codec against the contract.

    Subclass it (the subclass's name must start with ``Test``) and set ``spec``. Every
    other attribute has a default:

    - ``spec``: a pipeline spec string that uses the codec (a CODES → BYTES codec needs a
      quantizer before it: ``"int4+deflate"``; a cache stage a chain after it:
      ``"snapkv:keep=8 identity"``). To test several specs in one class, override the
      ``kvcodec_spec`` fixture with ``params`` (and ``kvcodec_codec`` if the codec under
      test differs between them).
    - ``codec``: the codec under test, when ``spec`` names several.
    - ``extra_codecs``: stage classes to register without installing them.
    - ``context``: keyword arguments for ``kvcodec.encode`` (cache stages read them).
    - ``invalid_params``: parameter texts the codec must reject, e.g. ``("bits=1",)``.
    - ``require_error_bound``: a lossy FLOAT stage must declare ``error_bound`` (True).
    - ``cache_stage_keeps_values``: a cache stage keeps original keys and values (True).
    - ``head_dims``: head_dim choices for drawn caches.
    - ``fixed_head_dims``: head dims of the fixed caches, keys first, values last
      (``(8, 12)``; see :func:`~kvcodec.testing.caches.standard_caches`).
    - ``very_long_sequences``: add a fixed cache of more than 65536 tokens (False: it
      costs seconds per check on a small CPU).
    - ``max_examples``: hypothesis examples per property (20).
    - ``decode_timeout``: seconds before an encode or decode counts as a hang (10).
    - ``devices``: where round trips run (CPU, and CUDA when present).

    Override :meth:`drawn_caches` (a hypothesis strategy) or :meth:`fixed_caches` to
    change the caches.
    """

    spec: ClassVar[str]
    codec: ClassVar[str | None] = None
    extra_codecs: ClassVar[Sequence[type[Stage]]] = ()
    context: ClassVar[Mapping[str, Any]] = {}
    invalid_params: ClassVar[Sequence[str]] = ()
    require_error_bound: ClassVar[bool] = True
    cache_stage_keeps_values: ClassVar[bool] = True
    head_dims: ClassVar[tuple[int, ...]] = HEAD_DIMS
    fixed_head_dims: ClassVar[tuple[int, ...]] = (8, 12)
    very_long_sequences: ClassVar[bool] = False
    max_examples: ClassVar[int] = 20
    decode_timeout: ClassVar[float] = 10.0
    devices: ClassVar[tuple[str, ...]] = default_devices()

    # ------------------------------------------------------------------ fixtures
    @pytest.fixture
    def kvcodec_spec(self) -> str:
        """The spec under test (default: the class attribute ``spec``)."""
        return self.spec

    @pytest.fixture
    def kvcodec_codec(self, kvcodec_spec: str) -> str | None:
        """The codec under test in ``kvcodec_spec`` (default: the class attribute ``codec``)."""
        return self.codec

    @pytest.fixture
    def codec_subject(self, kvcodec_spec: str, kvcodec_codec: str | None) -> Subject:
        """The :class:`~kvcodec.testing.subject.Subject` every test method checks."""
        return Subject(
            kvcodec_spec,
            kvcodec_codec,
            extra_codecs=self.extra_codecs,
            context=self.context,
            decode_timeout=self.decode_timeout,
            require_error_bound=self.require_error_bound,
            invalid_params=self.invalid_params,
            cache_stage_keeps_values=self.cache_stage_keeps_values,
        )

    # ------------------------------------------------------------------ caches
    def drawn_caches(self):
        """The hypothesis strategy the properties draw caches from."""
        return kv_caches(head_dims=self.head_dims)

    def fixed_caches(self) -> list[KVCache]:
        """Small deterministic caches every check runs on first."""
        return standard_caches(head_dims=tuple(self.fixed_head_dims), very_long=self.very_long_sequences)

    def _on_fixed(self, subject: Subject, check: Callable, limit: int | None = None) -> None:
        ran, refused, skipped = 0, [], []
        for cache in self.fixed_caches()[:limit]:
            try:
                check(subject, cache)
                ran += 1
            except Unencodable as exc:
                refused.append(str(exc))
            except NotApplicable as exc:
                skipped.append(str(exc))
        if not ran and skipped and not refused:
            pytest.skip(skipped[0])
        if not ran:
            raise ContractViolation(check.__name__, "encode refused every fixed test cache: " + (refused[0] if refused else ""))

    def _property(self, subject: Subject, check: Callable) -> None:
        """``check`` on the fixed caches, then on hypothesis-drawn ones."""
        from hypothesis import HealthCheck, given, reject, settings

        self._on_fixed(subject, check)

        @settings(
            max_examples=self.max_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        )
        @given(cache=self.drawn_caches())
        def prop(cache: KVCache) -> None:
            try:
                check(subject, cache)
            except Unencodable:
                reject()

        prop()

    @staticmethod
    def _skip_if(reason: str | None) -> None:
        if reason:
            pytest.skip(reason)

    # ------------------------------------------------------------------ the tests
    def test_declaration(self, codec_subject: Subject) -> None:
        """Class attributes, parameters, registration, immutability, error-bound declaration."""
        check_declaration(codec_subject)

    def test_parameters_are_validated(self, codec_subject: Subject) -> None:
        """Bad values are refused with ValueError; accepted ones work; spec text and wire keep them."""
        self._on_fixed(codec_subject, check_parameters, limit=2)

    def test_encode_returns_declared_forms(self, codec_subject: Subject) -> None:
        """Declared forms, valid side information, codes within their width, input untouched."""
        self._property(codec_subject, check_forms)

    def test_round_trip_keeps_geometry(self, codec_subject: Subject) -> None:
        """Shapes, dtype, device, positions, seen tokens, layer types survive; finite stays finite."""
        for device in self.devices:
            self._property(codec_subject, lambda s, c, d=device: check_round_trip(s, c, d))

    def test_accuracy(self, codec_subject: Subject) -> None:
        """Lossless: bit-exact. Lossy: within the declared error bound."""
        self._skip_if(accuracy_not_applicable(codec_subject))
        self._property(codec_subject, check_accuracy)

    def test_byte_count(self, codec_subject: Subject) -> None:
        """len(payload) = inspect's total = header + sections = the size predicted from the codec's output."""
        self._property(codec_subject, check_byte_count)

    def test_encoding_is_deterministic(self, codec_subject: Subject) -> None:
        """The same cache gives the same bytes, and encoding leaves the cache unchanged."""
        self._property(codec_subject, check_deterministic)

    def test_non_finite_input(self, codec_subject: Subject) -> None:
        """NaN/inf input: CodecError, or a payload that decodes."""
        self._on_fixed(codec_subject, check_non_finite)

    def test_truncated_payloads_raise_decode_error(self, codec_subject: Subject) -> None:
        """Every prefix of a payload raises DecodeError, within the time limit."""
        self._on_fixed(codec_subject, check_truncation, limit=FUZZ_CACHES)

    def test_corrupted_payloads_raise_decode_error(self, codec_subject: Subject) -> None:
        """Flipped bytes raise DecodeError; with checksums fixed, the codec raises DecodeError or decodes."""
        self._on_fixed(codec_subject, check_corruption, limit=FUZZ_CACHES)

    def test_damaged_stage_input(self, codec_subject: Subject) -> None:
        """The stage's decode on damaged data and side information raises DecodeError only."""
        self._skip_if(None if isinstance(codec_subject.stage, TensorStage) else "a cache stage has no decode")
        self._on_fixed(codec_subject, check_damaged_input, limit=FUZZ_CACHES + 1)

    def test_payload_is_self_contained(self, codec_subject: Subject) -> None:
        """A fresh process decodes the payloads identically and encodes the same bytes."""
        try:
            check_self_contained(codec_subject, self.fixed_caches())
        except NotApplicable as exc:
            self._skip_if(str(exc))

    def test_cache_stage_keeps_a_subset(self, codec_subject: Subject) -> None:
        """A cache stage keeps distinct original tokens at their positions."""
        self._skip_if(None if not isinstance(codec_subject.stage, TensorStage) else "not a cache stage")
        self._property(codec_subject, check_cache_stage)

