"""The empirical entropy of a payload's integer codes: the bound its entropy coder is
measured against.

For every layer's keys and values whose chain quantizes (a stage produces integer
codes), take the codes that reach the end of the chain's CODES part — the input of its
first CODES → BYTES stage (``ans``, ``zstd``), or the chain's output when it ends in
codes — and split them into one symbol stream per KV head. With ``c_s`` occurrences of
symbol s in a stream of ``n`` codes, the stream's order-0 empirical entropy is

    H = Σ_s c_s · log2(n / c_s)      bits

(Shannon, 1948): what an ideal coder with an exact, free, per-head table would spend. The
``ans`` stage with its default ``context=head`` spends H plus its tables and coder state
(``specs/entropy-coding.md`` §6); no order-0 per-head coder spends less. The codes are
recovered from the payload itself by undoing only its byte stages, so the figure describes
exactly what was sent.
"""

from __future__ import annotations

import numpy as np

from kvcodec import wire
from kvcodec.codec import Codes, Form

__all__ = ["symbol_entropy_bits", "stream_entropy_bits", "code_entropy_bits"]


def symbol_entropy_bits(row: np.ndarray) -> float:
    """``Σ_s c_s · log2(n / c_s)`` in bits for the integer symbols of ``row`` (any shape,
    flattened; 0 for none): the order-0 empirical entropy of one stream, times its length."""
    row = np.asarray(row).reshape(-1).astype(np.int64)
    if row.size == 0:
        return 0.0
    counts = np.bincount(row - row.min())
    counts = counts[counts > 0].astype(np.float64)
    return float((counts * np.log2(row.size / counts)).sum())


def stream_entropy_bits(codes: Codes) -> float:
    """Order-0 empirical entropy of ``codes`` in bits, summed over its KV heads.

    Args:
        codes: integer codes ``[B, H, T, D]`` (any width); one stream per head ``h`` holds
            ``codes[:, h]``.

    Returns:
        Bits (float, ≥ 0); 0 for no codes.

    Raises:
        ValueError: if the codes are not 4-dimensional.
    """
    values = codes.data.detach().cpu().numpy()
    if values.ndim != 4:
        raise ValueError(f"stream_entropy_bits needs [B,H,T,D] codes, got shape {values.shape}")
    return sum(symbol_entropy_bits(values[:, h]) for h in range(values.shape[1]))


def _codes(chain, enc: wire.EncodedTensor) -> Codes | None:
    """The codes at the end of ``chain``'s CODES part, undoing its byte stages only."""
    data, j = enc.data, len(chain.stages)
    while j > 0 and chain.stages[j - 1].produces is Form.BYTES:
        j -= 1
        if chain.stages[j].accepts is Form.CODES:
            return chain.stages[j].decode(data, enc.sides[j])
        data = chain.stages[j].decode(data, enc.sides[j])
    return data if isinstance(data, Codes) else None


def code_entropy_bits(payload: wire.Payload) -> float | None:
    """Σ of :func:`stream_entropy_bits` over every quantized tensor of ``payload``.

    Args:
        payload: a structured payload (:func:`kvcodec.api.encode_payload` or
            :func:`kvcodec.wire.load`).

    Returns:
        Bits, or ``None`` when no layer's chain produces integer codes (e.g. ``fp16``).
        Tensors whose chain does not quantize add nothing.

    Raises:
        DecodeError: if a byte stage cannot undo its data (a damaged payload).
    """
    total, found = 0.0, False
    for layer in payload.layers:
        for enc in (layer.keys, layer.values):
            codes = _codes(payload.chains[enc.chain], enc)
            if codes is not None:
                total += stream_entropy_bits(codes)
                found = True
    return total if found else None
