"""Exceptions kvcodec_sim raises for bad input.

kvcodec_sim depends on nothing but the standard library, attrs, SimPy and NumPy, so its
errors do not derive from ``kvcodec.errors``; callers that want one hierarchy catch
:class:`LinkSpecError` (a :class:`ValueError`) where they call into the simulator.
"""

from __future__ import annotations


class LinkSpecError(ValueError):
    """A link parameter is malformed or out of range.

    Raised for a bandwidth, duration or size string that does not follow the grammar in
    ``specs/link-model.md`` (empty, negative, zero bandwidth, unknown unit, ``nan``/``inf``,
    garbage) and for :class:`~kvcodec_sim.link.Link` fields outside their ranges.
    ``str(err)`` is one line: for a string it quotes the text, says what is wrong and gives
    examples of valid forms; for a field it names the field and the value.
    """


class TransferAborted(RuntimeError):
    """A reliable transfer gave up: one packet needed more transmissions than allowed.

    Raised by :func:`~kvcodec_sim.arq.simulate_arq` when a packet would be sent more than
    ``ArqConfig.max_transmissions`` times: a channel that loses almost everything, or a
    window so large for the link's slowest rate that round trips through the queue exceed
    ``max_rto_s`` (timers then fire again and again), would otherwise run for ever.
    ``str(err)`` is one line naming the packet and the limit.
    """


def quoted(text: str) -> str:
    """``repr(text)``, shortened to 57 characters plus ``...`` when ``text`` is longer than 60."""
    return repr(text) if len(text) <= 60 else repr(text[:57]) + "..."


def quoted_path(path: str) -> str:
    """``repr(path)``, keeping its last 57 characters after ``...`` when it is longer than 60
    (the file name is the informative end of a path)."""
    return repr(path) if len(path) <= 60 else "..." + repr(path[-57:])
