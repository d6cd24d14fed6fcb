"""Built-in plugin: quantizers (uniform integer, 1-bit sign) and casts (identity, FP16).

The exact arithmetic is specified in ``specs/quantization.md``.
"""

from kvcodec.hookspecs import hookimpl

from .cast import FP16Cast, Identity
from .sign import SignQuantizer
from .uniform import UniformQuantizer

__all__ = ["UniformQuantizer", "SignQuantizer", "Identity", "FP16Cast"]


@hookimpl
def register_codecs(register):
    for cls in (UniformQuantizer, SignQuantizer, Identity, FP16Cast):
        register(cls)
