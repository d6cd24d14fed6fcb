"""Built-in plugin: delta coding along the tokens.

- ``delta``: FLOAT → FLOAT, before a quantizer (open loop; lossy only by float rounding);
- ``cdelta``: CODES → CODES, after a quantizer (closed loop, lossless, modulo 2^bits).

Each has ``mode=anchor`` (groups of ``group`` tokens against their first token, decodable
in parallel) and ``mode=seq`` (each token against the previous one). Arithmetic in
``specs/transforms.md``.
"""

from kvcodec.hookspecs import hookimpl

from .code_delta import CodeDelta
from .float_delta import Delta

__all__ = ["Delta", "CodeDelta"]


@hookimpl
def register_codecs(register):
    for cls in (Delta, CodeDelta):
        register(cls)
