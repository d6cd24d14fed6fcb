"""Which earlier token each token is coded against (``specs/transforms.md`` §2).

Both delta stages work along the token axis (dim 2) of a ``[B, H, T, D]`` tensor:

- ``mode="anchor"``: tokens form groups of ``group`` consecutive tokens
  (``0 … G−1``, ``G … 2G−1``, …; the last group may be shorter); each group's first token
  is its **anchor** and is sent as it is, every other token as its difference from the
  anchor. Every token decodes from its own value and its anchor's: in parallel, and a
  damaged or coarsely quantized token affects no other.
- ``mode="seq"``: token 0 is sent as it is, token t > 0 as its difference from token
  t − 1. Decoding is a running sum along the tokens.
"""

from __future__ import annotations

import torch

MODES = ("anchor", "seq")
DEFAULT_GROUP = 16


def check_mode(_inst, attr, value: str) -> None:
    """attrs validator: ``mode`` is ``"anchor"`` or ``"seq"``."""
    if value not in MODES:
        raise ValueError(f"'mode' must be anchor or seq (got {value!r})", attr)


def check_group(inst, attr, value: int) -> None:
    """attrs validator: ``group`` ≥ 1, and left at its default for ``mode="seq"`` (where
    it means nothing)."""
    if value < 1:
        raise ValueError(f"'group' must be >= 1 (got {value})", attr)
    if inst.mode == "seq" and value != DEFAULT_GROUP:
        raise ValueError(
            "'group' applies to mode=anchor only; mode=seq codes each token against the previous one", attr
        )


def anchors(seq_len: int, group: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchor index of every token ``[T]`` int64, mask of the anchor tokens ``[T]`` bool):
    the anchor of token t is ``(t // group) · group``."""
    t = torch.arange(seq_len, device=device)
    a = torch.div(t, group, rounding_mode="floor") * group
    return a, a == t
