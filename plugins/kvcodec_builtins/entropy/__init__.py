"""Built-in plugin: lossless entropy coding of quantizer codes (CODES → BYTES).

- ``ans``: rANS (``constriction``) with frequency tables per KV head, per channel or per
  tensor, sent inside the stream;
- ``zstd``: the bit-packed codes compressed by Zstandard, a general-purpose baseline.

Both fall back to the bit-packed codes when coding does not make them shorter, so a coded
tensor is never more than one byte longer than the packed codes. The stream layout,
tables and coder arithmetic are specified in ``specs/entropy-coding.md``;
:func:`empirical_entropy` gives the bound to compare them with.
"""

from kvcodec.hookspecs import hookimpl

from .ans import ANSCoder
from .stats import empirical_entropy, entropy_bits
from .zstd import Zstd

__all__ = ["ANSCoder", "Zstd", "empirical_entropy", "entropy_bits"]


@hookimpl
def register_codecs(register):
    for cls in (ANSCoder, Zstd):
        register(cls)
