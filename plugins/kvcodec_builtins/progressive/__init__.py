"""Built-in plugin: the embedded (bit-plane) mid-rise uniform quantizer ``prog``.

As a stage it is an ordinary fixed-width quantizer (``prog8``, FLOAT → CODES) that the
wire format and the evaluation harness handle like ``int8``. Its codes are *embedded*:
the top ``b`` bits of a ``B``-bit code are the code of the ``b``-bit quantizer over the
same range, so :mod:`kvcodec.progressive` can send them as bit planes, most significant
first. Arithmetic in ``specs/progressive.md``.
"""

from kvcodec.hookspecs import hookimpl

from .embedded import ProgressiveQuantizer, embedded_codes, group_stats, reconstruct

__all__ = ["ProgressiveQuantizer", "embedded_codes", "group_stats", "reconstruct"]


@hookimpl
def register_codecs(register):
    register(ProgressiveQuantizer)
