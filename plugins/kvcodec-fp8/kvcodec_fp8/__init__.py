"""kvcodec-fp8: a kvcodec plugin providing the ``e4m3`` codec (FP8 E4M3 quantization).

kvcodec finds this module through the entry point ``e4m3 = "kvcodec_fp8"`` of the group
``kvcodec`` (``pyproject.toml``) and calls its ``register_codecs`` hook.
"""

from kvcodec import hookimpl

from .e4m3 import E4M3

__version__ = "0.1.0"
__all__ = ["E4M3"]


@hookimpl
def register_codecs(register):
    """Register the ``e4m3`` codec."""
    register(E4M3)
