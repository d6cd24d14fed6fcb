"""A receiver's compute, measured once on a real device and read back as numbers.

``kvcodec profile`` measures, with the real model on the real device, how long the
receiver takes to prefill text, to run a question through a received cache (layer by
layer) and to decode each codec level, for a grid of context lengths, and writes a JSON
file (``specs/streaming.md`` §3 is the format). :class:`ReceiverProfile` loads that file
without torch and interpolates it, piecewise linearly in tokens, for the simulator.

Interpolation, for a quantity ``y`` measured at token counts ``x_0 < … < x_m``:
inside the grid, linear between the two neighbours; below ``x_0``, ``y(x_0)`` (fixed
costs dominate short contexts); above ``x_m``, the line through the last two points
(``y(x_m)`` when the grid has one point). Results are never negative.
"""

from __future__ import annotations

import json
import math
import os
from bisect import bisect_right
from typing import Any, Mapping, Sequence

import attrs

__all__ = ["PROFILE_FORMAT", "PROFILE_VERSION", "ProfileError", "CodecTiming", "ReceiverProfile", "interpolate"]

PROFILE_FORMAT = "kvcodec-receiver-profile"
PROFILE_VERSION = 1
#: Largest profile file read, in bytes.
MAX_PROFILE_BYTES = 64 * 1024 * 1024


class ProfileError(ValueError):
    """A receiver profile is unreadable, malformed, or lacks what was asked of it (one line)."""


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """``y(x)`` from samples ``(xs, ys)``, ``xs`` strictly increasing (rules in the module docstring)."""
    if x <= xs[0] or len(xs) == 1:
        value = ys[0] if x <= xs[0] else ys[-1]
    else:
        i = min(bisect_right(xs, x), len(xs) - 1)  # xs[i-1] < x <= xs[i], or the last segment
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        value = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return max(0.0, value)


def _seconds_list(name: str, values: Any, length: int) -> tuple[float, ...]:
    if not isinstance(values, list) or len(values) != length:
        raise ProfileError(f"profile field {name!r} must be a list of {length} numbers")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ProfileError(f"profile field {name!r} holds {v!r}: expected finite seconds >= 0")
        out.append(float(v))
    return tuple(out)


@attrs.frozen
class CodecTiming:
    """Encode and decode time of one level (a pipeline spec) on the whole cache, per grid
    point, and the cache's element count there (keys + values)."""

    encode_s: tuple[float, ...]
    decode_s: tuple[float, ...]
    elements: tuple[int, ...]


@attrs.frozen
class ReceiverProfile:
    """A measured receiver (``specs/streaming.md`` §3).

    Attributes:
        model: model name (``smollm2-135m``, …).
        device: ``cpu`` or ``cuda``; ``device_name`` says which one.
        dtype: the model's dtype when measured.
        layers: decoder layers.
        question_tokens: tokens of the question measured on top of each cache.
        tokens: the grid of context lengths, strictly increasing.
        text_prefill_s: prefill of ``tokens[i] + question_tokens`` tokens from text
            (logits of the last position only), per grid point.
        question_prefill_s: the question's prefill on a received cache of ``tokens[i]``
            tokens, whole model, until the first token is chosen.
        layer_s: per grid point, the time of each decoder layer within that prefill.
        head_s: per grid point, the rest of it (embedding, final norm, LM head, argmax):
            ``question_prefill_s − Σ layer_s``.
        codecs: level (canonical pipeline spec) → :class:`CodecTiming`.
        meta: everything else in the file (torch version, host, date, …), kept as read.
    """

    model: str
    device: str
    dtype: str
    layers: int
    question_tokens: int
    tokens: tuple[int, ...]
    text_prefill_s: tuple[float, ...]
    question_prefill_s: tuple[float, ...]
    layer_s: tuple[tuple[float, ...], ...]
    head_s: tuple[float, ...]
    codecs: Mapping[str, CodecTiming] = attrs.field(factory=dict, eq=False)
    meta: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    # ----------------------------------------------------------------- reading
    @classmethod
    def from_json(cls, data: Any, source: str = "<profile>") -> "ReceiverProfile":
        """Build a profile from its parsed JSON object.

        Raises:
            ProfileError: wrong format or version, a missing or malformed field (one line
                naming ``source`` and the field).
        """
        try:
            return cls._from_json(data)
        except ProfileError as exc:
            raise ProfileError(f"{source}: {exc}") from None

    @classmethod
    def _from_json(cls, data: Any) -> "ReceiverProfile":
        if not isinstance(data, dict):
            raise ProfileError("not a JSON object")
        if data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"not a receiver profile (format {data.get('format')!r}, expected {PROFILE_FORMAT!r})")
        if data.get("version") != PROFILE_VERSION:
            raise ProfileError(f"unsupported profile version {data.get('version')!r} (this reader handles {PROFILE_VERSION})")

        def field(name: str, kind, check=lambda v: True, what: str = ""):
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, kind) or not check(value):
                raise ProfileError(f"profile field {name!r} must be {what or kind.__name__}, got {value!r}")
            return value

        model = field("model", str, bool, "a non-empty string")
        device = field("device", str, bool, "a non-empty string")
        dtype = field("dtype", str, bool, "a non-empty string")
        layers = field("layers", int, lambda v: 1 <= v <= 4096, "an integer in 1..4096")
        question = field("question_tokens", int, lambda v: v >= 1, "an integer >= 1")
        tokens = field("tokens", list, bool, "a non-empty list")
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in tokens) or any(
            b <= a for a, b in zip(tokens, tokens[1:])
        ):
            raise ProfileError(f"profile field 'tokens' must be strictly increasing integers >= 1, got {tokens!r}")
        n = len(tokens)
        text = _seconds_list("text_prefill_s", data.get("text_prefill_s"), n)
        question_s = _seconds_list("question_prefill_s", data.get("question_prefill_s"), n)
        head = _seconds_list("head_s", data.get("head_s"), n)
        rows = data.get("layer_s")
        if not isinstance(rows, list) or len(rows) != n:
            raise ProfileError(f"profile field 'layer_s' must be a list of {n} lists of {layers} numbers")
        layer_s = tuple(_seconds_list(f"layer_s[{i}]", row, layers) for i, row in enumerate(rows))
        codecs_raw = data.get("codecs", {})
        if not isinstance(codecs_raw, dict):
            raise ProfileError("profile field 'codecs' must be an object")
        codecs = {}
        for spec, entry in codecs_raw.items():
            if not isinstance(entry, dict):
                raise ProfileError(f"profile codec {spec!r} must be an object")
            elements = entry.get("elements")
            if not isinstance(elements, list) or len(elements) != n or any(
                isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in elements
            ):
                raise ProfileError(f"profile codec {spec!r}: 'elements' must be a list of {n} integers >= 1")
            codecs[spec] = CodecTiming(
                _seconds_list(f"codecs[{spec!r}].encode_s", entry.get("encode_s"), n),
                _seconds_list(f"codecs[{spec!r}].decode_s", entry.get("decode_s"), n),
                tuple(elements),
            )
        known = {"format", "version", "model", "device", "dtype", "layers", "question_tokens", "tokens",
                 "text_prefill_s", "question_prefill_s", "layer_s", "head_s", "codecs"}
        meta = {k: v for k, v in data.items() if k not in known}
        return cls(model, device, dtype, layers, question, tuple(tokens), text, question_s, layer_s, head, codecs, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReceiverProfile":
        """Read a profile JSON file.

        Raises:
            ProfileError: unreadable, too large, not JSON, or malformed (one line).
        """
        name = os.fspath(path)
        try:
            with open(name, "rb") as f:
                raw = f.read(MAX_PROFILE_BYTES + 1)
        except OSError as exc:
            raise ProfileError(f"cannot read profile {name}: {exc.strerror or exc}") from None
        if len(raw) > MAX_PROFILE_BYTES:
            raise ProfileError(f"profile {name} is larger than {MAX_PROFILE_BYTES} bytes")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProfileError(f"profile {name} is not JSON: {str(exc).splitlines()[0]}") from None
        return cls.from_json(data, source=name)

    def to_json(self) -> dict:
        """The JSON object :meth:`from_json` reads (``meta`` fields included)."""
        out = dict(self.meta)
        out.update({
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "layers": self.layers,
            "question_tokens": self.question_tokens,
            "tokens": list(self.tokens),
            "text_prefill_s": list(self.text_prefill_s),
            "question_prefill_s": list(self.question_prefill_s),
            "layer_s": [list(r) for r in self.layer_s],
            "head_s": list(self.head_s),
            "codecs": {
                spec: {"encode_s": list(c.encode_s), "decode_s": list(c.decode_s), "elements": list(c.elements)}
                for spec, c in self.codecs.items()
            },
        })
        return out

    # ----------------------------------------------------------------- interpolation
    def _at(self, ys: Sequence[float], tokens: float) -> float:
        if isinstance(tokens, bool) or not isinstance(tokens, (int, float)) or not tokens >= 0:
            raise ValueError(f"tokens must be a number >= 0, got {tokens!r}")
        return interpolate(self.tokens, ys, tokens)

    def text_time_s(self, tokens: float) -> float:
        """Prefill from text of ``tokens`` context tokens plus the question, first token included."""
        return self._at(self.text_prefill_s, tokens)

    def context_time_s(self, tokens: float) -> float | None:
        """Prefill of ``tokens`` context tokens alone (no question), from the profile's
        optional ``context_prefill_s`` grid (``kvcodec profile`` writes it); ``None`` when the
        file has no such grid of the right length."""
        ys = self.meta.get("context_prefill_s")
        if not isinstance(ys, list) or len(ys) != len(self.tokens) or not all(isinstance(y, (int, float)) for y in ys):
            return None
        return self._at([float(y) for y in ys], tokens)

    def layer_times_s(self, tokens: float) -> tuple[float, ...]:
        """Each decoder layer's share of the question's prefill on a cache of ``tokens`` tokens."""
        return tuple(self._at([row[i] for row in self.layer_s], tokens) for i in range(self.layers))

    def head_time_s(self, tokens: float) -> float:
        """The question prefill's time outside the decoder layers (first-token time)."""
        return self._at(self.head_s, tokens)

    def question_time_s(self, tokens: float) -> float:
        """The whole question prefill on a received cache: ``Σ layer_times_s + head_time_s``."""
        return sum(self.layer_times_s(tokens)) + self.head_time_s(tokens)

    def prefill_layers_s(self, tokens: float, first_layer: int, layer_count: int) -> float:
        """The question's prefill through layers ``first_layer … first_layer+layer_count−1``."""
        if not (0 <= first_layer and layer_count >= 0 and first_layer + layer_count <= self.layers):
            raise ValueError(f"layers {first_layer}+{layer_count} outside the profile's {self.layers} layers")
        return sum(self.layer_times_s(tokens)[first_layer : first_layer + layer_count])

    def has_level(self, level: str) -> bool:
        return level in self.codecs

    def _codec(self, level: str) -> CodecTiming:
        try:
            return self.codecs[level]
        except KeyError:
            have = ", ".join(repr(s) for s in self.codecs) or "none"
            raise ProfileError(
                f"the profile of {self.model} on {self.device} has no timing for level {level!r} (it has {have}); "
                f"measure it with: kvcodec profile --level {level!r}"
            ) from None

    def decode_time_s(self, level: str, tokens: float, share: float = 1.0) -> float:
        """Decoding ``share`` (0–1, by elements) of a whole cache of ``tokens`` tokens at ``level``."""
        return share * self._at(self._codec(level).decode_s, tokens)

    def encode_time_s(self, level: str, tokens: float, share: float = 1.0) -> float:
        """Encoding ``share`` of a whole cache of ``tokens`` tokens at ``level`` (on this device)."""
        return share * self._at(self._codec(level).encode_s, tokens)

    def describe(self) -> str:
        name = self.meta.get("device_name") or self.device
        return (f"{self.model} on {name} ({self.device}, {self.dtype}), {len(self.tokens)} points "
                f"{self.tokens[0]}–{self.tokens[-1]} tokens")

