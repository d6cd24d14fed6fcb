"""The codec contract: what every stage of a pipeline is and does.

A pipeline is an ordered chain of **stages**. Each stage is a small frozen attrs class
whose fields are its parameters (validated at construction) and that declares which
*form* of data it accepts and which it produces:

========  ================================================================  ==============
form      what it is                                                        example stage
========  ================================================================  ==============
CACHE     a whole :class:`~kvcodec.cache.KVCache`; the stage may change     token selector
          the token set (shorter ``seq_len``, positions carried)
FLOAT     one layer's keys or values, ``[batch, kv_heads, seq_len, d]``     ``fp16``, delta, PCA
          float tensor
CODES     :class:`Codes`: unsigned integer codes of ``bits`` bits plus      ``int4`` produces,
          nothing else (side information travels separately)                delta-on-codes keeps
BYTES     ``bytes``                                                         entropy coder
========  ================================================================  ==============

Cache stages (:class:`CacheStage`) run first, on the whole cache. Then, for every layer,
the keys and the values each run through a chain of :class:`TensorStage`: FLOAT → … →
(CODES → …) → (BYTES). A tensor stage's ``encode`` returns its output and its **side
information**: a dict of named tensors (scales, zero points, bases, frequency tables,
shapes) that the wire format serializes next to the final data and hands back to the
stage's ``decode``. Everything a stage needs to invert itself must be in its parameters
or its side information; transmitted bytes therefore always include it.

``decode`` receives untrusted side information: it must validate it (see
:func:`side_tensor`) and raise :class:`~kvcodec.errors.DecodeError` when it is wrong.
"""

from __future__ import annotations

import enum
import functools
from typing import Any, ClassVar, Mapping

import attrs
import torch

from kvcodec.errors import DecodeError

__all__ = ["Form", "Codes", "Stage", "TensorStage", "CacheStage", "Side", "side_tensor", "PARAM_TYPES"]

Side = dict[str, torch.Tensor]
PARAM_TYPES = (bool, int, float, str)


class Form(enum.Enum):
    """The kind of data a stage accepts or produces (see the module docstring)."""

    CACHE = "cache"
    FLOAT = "float"
    CODES = "codes"
    BYTES = "bytes"


@attrs.frozen(eq=False)
class Codes:
    """Unsigned integer codes, each in ``[0, 2**bits)``.

    Attributes:
        data: integer tensor of any shape; ``uint8`` for ``bits ≤ 8``, ``int32`` above.
        bits: code width in bits, 1–16; the wire format packs ``bits`` bits per code.
    """

    data: torch.Tensor
    bits: int = attrs.field(validator=attrs.validators.and_(attrs.validators.ge(1), attrs.validators.le(16)))

    @staticmethod
    def storage_dtype(bits: int) -> torch.dtype:
        """The tensor dtype that holds ``bits``-bit codes: uint8 up to 8 bits, int32 above."""
        return torch.uint8 if bits <= 8 else torch.int32


class Stage:
    """Base of every codec stage. Subclasses are ``@attrs.frozen`` classes.

    Class attributes a subclass sets (plain assignments, no annotation):

    - ``name``: the name used in spec strings and on the wire; unique over all plugins.
    - ``family``: ``"quantizer"``, ``"selector"``, ``"transform"``, ``"entropy"``, … (shown
      by ``kvcodec plugins``).
    - ``version``: version of the meaning of the parameters and side information; bump it
      when they change. A reader rejects payloads written by a newer version.
    - ``accepts`` / ``produces``: :class:`Form` of input and output.
    - ``lossless``: ``decode(encode(x)) == x`` exactly.
    - ``bits_in_name``: describe as ``NAME<bits>`` (needs a ``bits`` parameter).

    Parameters are the attrs fields; each must be ``bool``, ``int``, ``float`` or ``str``
    (they appear in spec strings and in the wire header) and have a default.

    A lossy tensor stage declares how far its reconstruction may be off by overriding
    :meth:`TensorStage.error_bound`; :mod:`kvcodec.testing` checks every claim above.
    """

    name: ClassVar[str]
    family: ClassVar[str]
    version: ClassVar[int] = 1
    accepts: ClassVar[Form]
    produces: ClassVar[Form]
    lossless: ClassVar[bool] = False
    #: write ``bits`` into the name (``int4`` rather than ``int:bits=4``), the spec grammar's
    #: NAME<bits> shorthand
    bits_in_name: ClassVar[bool] = False

    @classmethod
    @functools.cache
    def param_types(cls) -> dict[str, type]:
        """Parameter name → Python type (bool, int, float or str), in declaration order."""
        attrs.resolve_types(cls)
        types = {}
        for field in attrs.fields(cls):
            if field.type not in PARAM_TYPES:
                raise TypeError(f"{cls.__name__}.{field.name}: parameter type must be one of {PARAM_TYPES}")
            types[field.name] = field.type
        return types

    @classmethod
    def from_params(cls, params: dict[str, Any], version: int) -> "Stage":
        """Build the stage from parameters read off the wire, written by version
        ``version`` (≤ ``cls.version``) of this codec.

        The default suits codecs whose changes are all backward compatible (new
        parameters default to the old behaviour). A codec whose side information changed
        overrides this and returns a stage that decodes the older layout.

        Raises:
            ValueError or TypeError: for parameters the codec rejects.
        """
        return cls(**params)

    def params(self) -> dict[str, Any]:
        """This stage's parameters, name → value, in declaration order."""
        return {name: getattr(self, name) for name in self.param_types()}

    def describe(self) -> str:
        """The stage as spec-string text, showing only parameters that differ from defaults."""
        defaults = {f.name: f.default for f in attrs.fields(type(self))}
        params = self.params()
        name = self.name
        if self.bits_in_name:
            name += str(params.pop("bits"))
        shown = [f"{k}={_fmt(v)}" for k, v in params.items() if v != defaults[k]]
        return name + (":" + ",".join(shown) if shown else "")

    def __str__(self) -> str:
        return self.describe()


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class TensorStage(Stage):
    """A stage applied to one layer's keys or values (forms FLOAT, CODES, BYTES)."""

    def encode(self, x: Any) -> tuple[Any, Side]:
        """Encode ``x`` (of form ``accepts``) into (output of form ``produces``, side info).

        Raises:
            CodecError: when this stage cannot encode ``x`` (e.g. a group size that does not
                divide head_dim).
        """
        raise NotImplementedError

    def decode(self, y: Any, side: Mapping[str, torch.Tensor]) -> Any:
        """Invert :meth:`encode`: from its output and side info back to its input form.

        Raises:
            DecodeError: when ``y`` or ``side`` is inconsistent (they come from the wire).
        """
        raise NotImplementedError

    def error_bound(self, x: torch.Tensor, side: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """The reconstruction error this stage promises for the input ``x``.

        Declared by stages that accept FLOAT (``specs/plugins.md`` §4.6). ``x`` is the float
        tensor ``encode`` received, ``[batch, kv_heads, seq_len, head_dim]``, any float
        dtype, and ``side`` the side information ``encode`` returned for it. The result
        is a float tensor (float32 or float64) broadcastable to ``x.shape``, in the units
        of ``x``: for every finite element, ``|decode(encode(x)) − x| ≤ bound`` holds
        *before* the pipeline converts the decoded tensor to the cache dtype (that last
        rounding, half an ulp of the cache dtype, is accounted for by whoever checks the
        bound, e.g. :mod:`kvcodec.testing`). ``None`` declares no bound.

        The default is exact reconstruction (a zero bound) for ``lossless`` stages and
        ``None`` for lossy ones; a lossy stage SHOULD override it with a bound it can
        prove (for a uniform quantizer: half its step, plus float32 rounding).
        """
        if self.lossless:
            return torch.zeros((), dtype=torch.float64)
        return None


class CacheStage(Stage):
    """A stage applied to the whole cache before the per-tensor chains (token selectors).

    It returns a new :class:`~kvcodec.cache.KVCache`, possibly with fewer tokens per layer
    (or per KV head) and their positions; positions travel in the payload. Nothing is
    undone on decode: the receiver continues from the kept tokens at their positions.
    """

    accepts = Form.CACHE
    produces = Form.CACHE

    def apply(self, cache, context: Mapping[str, Any]):
        """Return the transformed cache. ``context`` holds optional extra inputs a stage may
        need (e.g. ``question_ids`` for question-aware selection).

        Raises:
            CodecError: when a required context entry is missing or the cache does not fit.
        """
        raise NotImplementedError


def side_tensor(
    side: Mapping[str, torch.Tensor],
    name: str,
    *,
    shape: tuple[int, ...] | None = None,
    dtypes: tuple[torch.dtype, ...] | None = None,
    stage: str = "",
) -> torch.Tensor:
    """Fetch and validate one side-information tensor inside a stage's ``decode``.

    Raises:
        DecodeError: if ``name`` is missing, or its shape or dtype is not the expected one.
    """
    where = f"{stage}: " if stage else ""
    if name not in side:
        raise DecodeError(f"{where}side information {name!r} is missing (have {sorted(side)})")
    t = side[name]
    if dtypes is not None and t.dtype not in dtypes:
        raise DecodeError(f"{where}side information {name!r} has dtype {t.dtype}, expected one of {dtypes}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise DecodeError(f"{where}side information {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t
