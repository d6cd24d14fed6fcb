"""Built-in plugin: token selectors — cache stages that send a fraction of the context
tokens with their positions (``q2c``, ``snapkv``, ``h2o``, ``streamingllm``, ``knorm``,
``random``). The exact rules are in ``specs/selectors.md``.
"""

from kvcodec.hookspecs import hookimpl

from .base import Selector, keep_count
from .h2o import H2O
from .knorm import KNorm
from .q2c import Q2C
from .random_tokens import RandomSelector
from .snapkv import SnapKV
from .streamingllm import StreamingLLM

__all__ = ["Selector", "keep_count", "Q2C", "SnapKV", "H2O", "StreamingLLM", "KNorm", "RandomSelector", "SELECTORS"]

SELECTORS = (Q2C, SnapKV, H2O, StreamingLLM, KNorm, RandomSelector)


@hookimpl
def register_codecs(register):
    for cls in SELECTORS:
        register(cls)
