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
