"""The empirical entropy of quantizer codes: the bound an entropy coder is measured against.

For codes split into the K symbol streams of a context (``tables.py``: per tensor, per KV
head, per KV head and channel), with ``c_ks`` occurrences of symbol s in stream k of
``n_k`` symbols, the empirical entropy is

    H = Σ_k Σ_s c_ks · log2(n_k / c_ks)      bits for the whole tensor

which is what an ideal coder with exact, free, per-stream tables would spend (Shannon,
1948). The ``ans`` stage spends H plus the tables, the effect of quantized frequencies,
and at most two 32-bit words of coder state (``specs/entropy-coding.md`` §6).
"""

from __future__ import annotations

from kvcodec.codec import Codes
from kvcodec.codestats import symbol_entropy_bits

from . import tables

__all__ = ["entropy_bits", "empirical_entropy"]


def entropy_bits(codes: Codes, context: str = "head") -> float:
    """Empirical entropy of ``codes`` in bits, summed over the streams of ``context``.

    Args:
        codes: :class:`Codes` of any width; ``[B,H,T,D]`` unless ``context`` is
            ``"tensor"``.
        context: ``"head"``, ``"channel"`` or ``"tensor"`` (as the ``ans`` stage's
            parameter of that name).

    Returns:
        Bits (float, ≥ 0) an ideal coder with per-stream tables would need.

    Raises:
        ValueError: for an unknown context or codes of the wrong rank.
    """
    if context not in tables.CONTEXTS:
        raise ValueError(f"context must be one of {tables.CONTEXTS}, got {context!r}")
    values = codes.data.detach().cpu().numpy()
    if context != "tensor" and values.ndim != 4:
        raise ValueError(f"context={context} needs [B,H,T,D] codes, got shape {values.shape}")
    return sum(symbol_entropy_bits(row) for row in tables.split(values, context))


def empirical_entropy(codes: Codes, context: str = "head") -> float:
    """Empirical entropy in **bits per code** (:func:`entropy_bits` / number of codes; 0
    for no codes). Same arguments and errors as :func:`entropy_bits`."""
    n = codes.data.numel()
    return entropy_bits(codes, context) / n if n else 0.0
