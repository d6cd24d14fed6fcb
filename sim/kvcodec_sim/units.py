"""Parse human-written link quantities: bandwidths, durations and sizes.

Grammar (the full version, with examples, is in ``specs/link-model.md``)::

    quantity  := ws* number [' ' | '\\t']* unit ws*
    number    := digits ['.' digits*] [exponent] | '.' digits [exponent]
    exponent  := ('e' | 'E') ['+' | '-'] digits
    digits    := one or more of the ASCII digits 0-9

    bandwidth := number prefix? rate-unit          -> bit/s, > 0
    prefix    := 'k' | 'K' (10**3) | 'M' (10**6) | 'G' (10**9) | 'T' (10**12)
    rate-unit := 'bps' | 'b/s' | 'bit/s'           (bits per second)
               | 'Bps' | 'B/s'                     (bytes per second, x 8)

    duration  := number time-unit                  -> seconds, >= 0
    time-unit := 's' | 'ms' | 'us' | 'µs' | 'μs' | 'ns'

    size      := number [size-prefix? 'B']         -> whole bytes, >= 0
    size-prefix := 'k' | 'K' | 'M' | 'G'           (decimal: 10**3, 10**6, 10**9)

    probability := number ['%']                    -> float in [0, 1]

Decisions: ``b`` is a bit and ``B`` a byte; prefixes are SI decimal (``k`` = 1000) and a
lowercase ``m``, ``g`` or ``t`` is rejected, since ``m`` means milli; binary prefixes
(``Ki``, ``Mi``) are rejected. Exponents are allowed (``1e9bps``). A bandwidth and a
duration need a unit (a bare ``10`` could be seconds, milliseconds or microseconds, as in
``tc``); a bare size is bytes (``1500``). Signs are not part of the grammar: a leading
``-`` is reported as a negative quantity. Numbers are read exactly (``decimal``) and
rounded once to the nearest float, so ``1.1Mbps`` is exactly ``1100000.0``.
"""

from __future__ import annotations

import decimal
import math
import re
from decimal import Decimal

from kvcodec_sim.errors import LinkSpecError

__all__ = ["parse_bandwidth", "parse_duration", "parse_probability", "parse_size"]

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_NUMBER_RE = re.compile(_NUMBER)
_BANDWIDTH_RE = re.compile(rf"(?P<number>{_NUMBER})[ \t]*(?P<prefix>[kKMGT]?)(?P<unit>bps|b/s|bit/s|Bps|B/s)")
_DURATION_RE = re.compile(rf"(?P<number>{_NUMBER})[ \t]*(?P<unit>s|ms|us|\u00b5s|\u03bcs|ns)")
_SIZE_RE = re.compile(rf"(?P<number>{_NUMBER})(?:[ \t]*(?P<prefix>[kKMG]?)B)?")
_PROBABILITY_RE = re.compile(rf"(?P<number>{_NUMBER})(?:[ \t]*(?P<percent>%))?")

_SI = {"": Decimal(1), "k": Decimal(10) ** 3, "K": Decimal(10) ** 3, "M": Decimal(10) ** 6,
       "G": Decimal(10) ** 9, "T": Decimal(10) ** 12}
_BITS_PER_UNIT = {"bps": Decimal(1), "b/s": Decimal(1), "bit/s": Decimal(1), "Bps": Decimal(8), "B/s": Decimal(8)}
_SECONDS_PER_UNIT = {"s": Decimal(1), "ms": Decimal("1e-3"), "us": Decimal("1e-6"), "\u00b5s": Decimal("1e-6"),
                     "\u03bcs": Decimal("1e-6"), "ns": Decimal("1e-9")}
_MAX_SIZE_BYTES = 2**63 - 1

_BANDWIDTH_FORM = "a positive number and a rate unit (bps, b/s, bit/s for bits; Bps, B/s for bytes; prefixes k, M, G, T)"
_BANDWIDTH_EXAMPLES = "100Mbps, 1Gbps, 10Gbit/s, 12.5MB/s, 800kbit/s, 1.5 Mbit/s, 56000bps, 1e9bps"
_DURATION_FORM = "a non-negative number and a time unit (s, ms, us, µs, ns)"
_DURATION_EXAMPLES = "10ms, 0.5s, 250us, 20 ms, 0s"
_SIZE_FORM = "a non-negative whole number of bytes, optionally with B and a prefix k, M, G"
_SIZE_EXAMPLES = "1500, 9000B, 9kB, 64 kB"
_PROBABILITY_FORM = "a number from 0 to 1, or a percentage from 0% to 100%"
_PROBABILITY_EXAMPLES = "0.01, 1%, 0.5%, 0, 0.3"


def _error(what: str, text: str, reason: str, form: str, examples: str) -> LinkSpecError:
    """A one-line :class:`LinkSpecError` quoting ``text`` (shortened past 60 characters)."""
    shown = repr(text) if len(text) <= 60 else repr(text[:57]) + "..."
    return LinkSpecError(f"invalid {what} {shown}: {reason}; expected {form}, e.g. {examples}")


def _quantity(text: object, what: str, pattern: re.Pattern, form: str, examples: str) -> tuple[Decimal, re.Match]:
    """Match ``text`` against ``pattern`` and return its number, read exactly, and the match.

    Raises:
        TypeError: ``text`` is not a ``str``.
        LinkSpecError: ``text`` is empty, negative or does not match ``pattern``.
    """
    if not isinstance(text, str):
        raise TypeError(f"{what} must be given as str, got {type(text).__name__}")
    body = text.strip()
    negative = body.startswith("-")
    if negative:
        body = body[1:]
    match = pattern.fullmatch(body)
    if match is None:
        number = _NUMBER_RE.match(body)
        if not text.strip():
            reason = "empty"
        elif number is None:
            reason = "does not start with a number"
        elif not body[number.end():].strip():
            reason = "missing unit"
        else:
            reason = f"unknown unit {body[number.end():].strip()!r}"
        raise _error(what, text, reason, form, examples)
    if negative:
        raise _error(what, text, "negative", form, examples)
    try:
        return Decimal(match["number"]), match
    except decimal.DecimalException:  # an exponent beyond decimal's range
        raise _error(what, text, "number out of range", form, examples) from None


def _scaled(number: Decimal, scale: Decimal) -> Decimal:
    """``number * scale`` computed exactly, or infinity when it overflows decimal's range."""
    context = decimal.Context(prec=len(number.as_tuple().digits) + 4, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
    try:
        return context.multiply(number, scale)
    except decimal.Overflow:
        return Decimal("Infinity")


def parse_bandwidth(text: str) -> float:
    """Parse a link bandwidth such as ``"100Mbps"`` into bits per second.

    ``b`` is a bit and ``B`` a byte (``"12.5MB/s"`` is ``1e8`` bit/s); prefixes are SI
    decimal (``k``/``K`` = 10**3, ``M`` = 10**6, ``G`` = 10**9, ``T`` = 10**12); one run of
    spaces or tabs may separate number and unit; exponents are allowed (``"1e9bps"``).

    Args:
        text: the bandwidth as written, e.g. ``"1Gbps"``, ``"10Gbit/s"``, ``"800kbps"``.

    Returns:
        The bandwidth in bit/s: finite and greater than zero.

    Raises:
        TypeError: ``text`` is not a ``str``.
        LinkSpecError: ``text`` is empty, negative, zero (or rounds to zero), infinite after
            rounding to float, ``nan``/``inf``, has no or an unknown unit, or is not a number.
    """
    number, match = _quantity(text, "bandwidth", _BANDWIDTH_RE, _BANDWIDTH_FORM, _BANDWIDTH_EXAMPLES)
    bits_per_s = float(_scaled(number, _SI[match["prefix"]] * _BITS_PER_UNIT[match["unit"]]))
    if not math.isfinite(bits_per_s):
        raise _error("bandwidth", text, "too large", _BANDWIDTH_FORM, _BANDWIDTH_EXAMPLES)
    if bits_per_s <= 0.0:
        raise _error("bandwidth", text, "must be greater than 0 bit/s", _BANDWIDTH_FORM, _BANDWIDTH_EXAMPLES)
    return bits_per_s


def parse_duration(text: str) -> float:
    """Parse a duration such as ``"10ms"`` into seconds.

    Units: ``s``, ``ms``, ``us`` (or ``µs``/``μs``), ``ns``. A unit is required: ``"10"``
    is rejected because it is ambiguous (pass a ``float`` of seconds where an API accepts one).

    Args:
        text: the duration as written, e.g. ``"0.5s"``, ``"250us"``, ``"20 ms"``.

    Returns:
        The duration in seconds: finite and ≥ 0 (``"0s"`` is allowed).

    Raises:
        TypeError: ``text`` is not a ``str``.
        LinkSpecError: ``text`` is empty, negative, too large for a float, ``nan``/``inf``,
            has no or an unknown unit, or is not a number.
    """
    number, match = _quantity(text, "duration", _DURATION_RE, _DURATION_FORM, _DURATION_EXAMPLES)
    seconds = float(_scaled(number, _SECONDS_PER_UNIT[match["unit"]]))
    if not math.isfinite(seconds):
        raise _error("duration", text, "too large", _DURATION_FORM, _DURATION_EXAMPLES)
    return seconds


def parse_size(text: str) -> int:
    """Parse a size in bytes such as an MTU (``"1500"``, ``"9000B"``, ``"9kB"``).

    A bare number is bytes. Prefixes are SI decimal (``k``/``K`` = 10**3, ``M``, ``G``);
    a lowercase ``b`` (bits) is rejected. The value must be a whole number of bytes
    (``"1.5kB"`` is 1500; ``"1.5B"`` is rejected).

    Args:
        text: the size as written.

    Returns:
        The size in bytes: an ``int`` with ``0 ≤ size ≤ 2**63 - 1``.

    Raises:
        TypeError: ``text`` is not a ``str``.
        LinkSpecError: ``text`` is empty, negative, fractional, above ``2**63 - 1``,
            ``nan``/``inf``, has an unknown unit, or is not a number.
    """
    number, match = _quantity(text, "size", _SIZE_RE, _SIZE_FORM, _SIZE_EXAMPLES)
    if number.adjusted() > 19:  # more than 20 digits: certainly above the limit; skip the exact product
        raise _error("size", text, f"larger than {_MAX_SIZE_BYTES} bytes", _SIZE_FORM, _SIZE_EXAMPLES)
    nbytes = _scaled(number, _SI[match["prefix"] or ""])
    if nbytes != nbytes.to_integral_value():
        raise _error("size", text, "not a whole number of bytes", _SIZE_FORM, _SIZE_EXAMPLES)
    if nbytes > _MAX_SIZE_BYTES:
        raise _error("size", text, f"larger than {_MAX_SIZE_BYTES} bytes", _SIZE_FORM, _SIZE_EXAMPLES)
    return int(nbytes)


def parse_probability(text: str) -> float:
    """Parse a probability such as a loss rate: ``"0.01"`` or ``"1%"``.

    A bare number is a probability in ``[0, 1]``; a number followed by ``%`` (one run of
    spaces or tabs may come before it) is a percentage in ``[0, 100]``. The number is read
    exactly and rounded once, so ``"1%"`` is exactly ``0.01``.

    Args:
        text: the probability as written, e.g. ``"0.3"``, ``"30%"``, ``"0.5 %"``.

    Returns:
        The probability, a float in ``[0, 1]``.

    Raises:
        TypeError: ``text`` is not a ``str``.
        LinkSpecError: ``text`` is empty, negative, above 1 (100 %), ``nan``/``inf``, has
            an unknown suffix, or is not a number.
    """
    number, match = _quantity(text, "probability", _PROBABILITY_RE, _PROBABILITY_FORM, _PROBABILITY_EXAMPLES)
    if match["percent"]:
        number = _scaled(number, Decimal("0.01"))
    if number > 1:
        raise _error("probability", text, "greater than 1 (100%)", _PROBABILITY_FORM, _PROBABILITY_EXAMPLES)
    return float(number)
