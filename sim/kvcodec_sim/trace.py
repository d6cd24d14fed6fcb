"""A bandwidth trace: the link's serialization rate as a piecewise-constant function of time.

A trace is a list of rows ``(t_i, r_i)``: from ``t_i`` seconds (inclusive) until
``t_{i+1}`` (exclusive) the link serializes at ``r_i`` bit/s. ``t_0`` must be 0, times
strictly increase, rates are finite and ≥ 0 (0 is an outage), and the last rate, which
holds for ever after the last row, must be > 0 (the trace does not loop).

Serialization integrates the trace: a packet of ``b`` bits whose first bit goes on the
wire at ``s`` finishes at the earliest ``e`` with ``∫_s^e r(t) dt = b``, so a packet that
straddles a rate change (or an outage) is sent partly at each rate.

File format (:meth:`BandwidthTrace.load`): UTF-8 text, one row per line, two numbers
``time_s bit_per_s`` separated by spaces, tabs and/or one comma; ``#`` starts a comment;
blank lines are ignored. Numbers are plain decimals with an optional exponent (``0.5``,
``1e8``), no sign and no units::

    # time_s  bit_per_s
    0     100e6
    1.5   20e6
    2.0   0          # outage
    2.25  100e6
"""

from __future__ import annotations

import math
import os
import re
from bisect import bisect_left, bisect_right

import attrs

from kvcodec_sim.errors import LinkSpecError, quoted, quoted_path

__all__ = ["BandwidthTrace"]

_NUMBER_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SEPARATOR_RE = re.compile(r"[ \t]*,[ \t]*|[ \t]+")
_FORM = "expected rows 'time_s bit_per_s' (e.g. '0 100e6'), times from 0 strictly increasing, rates >= 0, last rate > 0"

#: Largest trace file read, in bytes (a guard against being handed a huge or endless file).
MAX_TRACE_FILE_BYTES = 256 * 1024 * 1024


def _floats(name: str):
    def convert(values) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a sequence of real numbers, got {values!r}") from None

    return convert


@attrs.frozen
class BandwidthTrace:
    """Serialization rate over time, piecewise constant (see the module docstring).

    Attributes:
        times_s: start time of each row in seconds; ``times_s[0] == 0``, strictly increasing.
        rates_bps: rate of each row in bit/s; finite and ≥ 0, the last one > 0.
        source: where the trace came from (a file name), for messages; not compared.

    Raises:
        TypeError: a field is not a sequence of numbers.
        LinkSpecError: the rows break a rule above (one line naming the row).
    """

    times_s: tuple[float, ...] = attrs.field(converter=_floats("times_s"))
    rates_bps: tuple[float, ...] = attrs.field(converter=_floats("rates_bps"))
    source: str = attrs.field(default="<trace>", eq=False)
    _cumulative_bits: tuple[float, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        times, rates = self.times_s, self.rates_bps
        problem = _check_rows(times, rates)
        if problem is not None:
            row, reason = problem
            raise LinkSpecError(f"invalid bandwidth trace {quoted_path(self.source)} row {row}: {reason}; {_FORM}")
        cumulative = [0.0]
        for i in range(len(times) - 1):
            cumulative.append(cumulative[-1] + rates[i] * (times[i + 1] - times[i]))
        object.__setattr__(self, "_cumulative_bits", tuple(cumulative))

    # ------------------------------------------------------------------ reading

    @classmethod
    def parse(cls, text: str, source: str = "<string>") -> "BandwidthTrace":
        """Read a trace from ``text`` in the file format of the module docstring.

        Raises:
            TypeError: ``text`` is not a ``str``.
            LinkSpecError: a line is malformed or the rows break a rule; the one-line
                message names ``source`` and the line number (1-based).
        """
        if not isinstance(text, str):
            raise TypeError(f"trace text must be a str, got {type(text).__name__}")
        times: list[float] = []
        rates: list[float] = []
        lines: list[int] = []
        for number, line in enumerate(text.splitlines(), start=1):
            body = line.split("#", 1)[0].strip()
            if not body:
                continue
            fields = _SEPARATOR_RE.split(body)
            if len(fields) != 2:
                raise _line_error(source, number, f"expected 2 fields, got {len(fields)} in {quoted(body)}")
            values = []
            for what, field in zip(("time", "rate"), fields):
                if field.startswith("-") and _NUMBER_RE.fullmatch(field[1:]):
                    raise _line_error(source, number, f"negative {what} {quoted(field)}")
                if not _NUMBER_RE.fullmatch(field):
                    raise _line_error(source, number, f"{what} {quoted(field)} is not a plain number")
                value = float(field)
                if not math.isfinite(value):
                    raise _line_error(source, number, f"{what} {quoted(field)} is too large")
                values.append(value)
            times.append(values[0])
            rates.append(values[1])
            lines.append(number)
        if not times:
            raise LinkSpecError(f"invalid bandwidth trace {quoted_path(source)}: no rows; {_FORM}")
        problem = _check_rows(times, rates)
        if problem is not None:
            row, reason = problem
            raise _line_error(source, lines[row], reason)
        return cls(times, rates, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BandwidthTrace":
        """Read a trace file (UTF-8, format in the module docstring).

        Raises:
            LinkSpecError: the file cannot be read (missing, a directory, no permission,
                larger than :data:`MAX_TRACE_FILE_BYTES`), is not UTF-8 text, or is
                malformed; one line naming the file (and the line).
        """
        name = os.fspath(path)
        try:
            with open(name, "rb") as handle:
                data = handle.read(MAX_TRACE_FILE_BYTES + 1)
        except OSError as err:
            raise LinkSpecError(f"cannot read bandwidth trace {quoted_path(str(name))}: {err.strerror or err}") from None
        if len(data) > MAX_TRACE_FILE_BYTES:
            raise LinkSpecError(f"bandwidth trace {quoted_path(str(name))} is larger than {MAX_TRACE_FILE_BYTES} bytes")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise LinkSpecError(
                f"invalid bandwidth trace {quoted_path(str(name))}: not UTF-8 text (byte {err.start})"
            ) from None
        return cls.parse(text, source=str(name))

    # ------------------------------------------------------------------ queries

    @property
    def max_rate_bps(self) -> float:
        """The highest rate in the trace, bit/s."""
        return max(self.rates_bps)

    def rate_at(self, time_s: float) -> float:
        """The rate in bit/s at ``time_s`` seconds (≥ 0): the row with the largest ``t_i ≤ time_s``."""
        return self.rates_bps[bisect_right(self.times_s, time_s) - 1]

    def bits_by(self, time_s: float) -> float:
        """Bits a continuously busy link has serialized from time 0 until ``time_s`` (≥ 0):
        ``∫_0^time_s r(t) dt``."""
        i = bisect_right(self.times_s, time_s) - 1
        return self._cumulative_bits[i] + self.rates_bps[i] * (time_s - self.times_s[i])

    def finish_time(self, start_s: float, bits: float) -> float:
        """When a packet of ``bits`` bits whose first bit goes on the wire at ``start_s``
        has been serialized: the earliest ``e ≥ start_s`` with ``∫_{start_s}^e r(t) dt = bits``.

        Exact up to floating-point rounding: with ``C(t) = bits_by(t)`` and target
        ``C(start_s) + bits``, the row ``k`` is the last one with ``C(t_k) < target`` and
        ``e = t_k + (target − C(t_k)) / r_k``. An outage (rate 0) is waited out; a packet
        that ends exactly where an outage begins finishes at the outage's start.

        Args:
            start_s: seconds, ≥ 0.
            bits: packet size in bits, ≥ 0 (0 finishes at ``start_s``).
        """
        if bits <= 0:
            return start_s
        target = self.bits_by(start_s) + bits
        cumulative = self._cumulative_bits
        k = bisect_left(cumulative, target) - 1
        end = self.times_s[k] + (target - cumulative[k]) / self.rates_bps[k]
        return end if end > start_s else start_s


def _check_rows(times, rates) -> tuple[int, str] | None:
    """``(row index, reason)`` for the first row that breaks a rule, or ``None``."""
    if len(times) != len(rates):
        return 0, f"{len(times)} times but {len(rates)} rates"
    if not times:
        return 0, "no rows"
    for i, (t, r) in enumerate(zip(times, rates)):
        if not math.isfinite(t) or t < 0:
            return i, f"time {t!r} must be finite and >= 0 seconds"
        if not math.isfinite(r) or r < 0:
            return i, f"rate {r!r} must be finite and >= 0 bit/s"
        if i == 0 and t != 0.0:
            return i, f"the first row must start at time 0, not {t!r}"
        if i > 0 and t <= times[i - 1]:
            return i, f"time {t!r} is not after the previous row's {times[i - 1]!r}"
    if rates[-1] <= 0.0:
        return len(times) - 1, "the last rate holds for ever and must be > 0 bit/s"
    return None


def _line_error(source: str, line: int, reason: str) -> LinkSpecError:
    return LinkSpecError(f"invalid bandwidth trace {quoted_path(source)} line {line}: {reason}; {_FORM}")
