"""Built-in plugin: low-rank projection of keys and values (``pca``, FLOAT → FLOAT).

The per-head basis and mean travel as side information; the coefficients, of shape
``[B, H, T, rank]``, may go on to a quantizer. Arithmetic in ``specs/transforms.md`` §5.
"""

from kvcodec.hookspecs import hookimpl

from .pca import PCA

__all__ = ["PCA"]


@hookimpl
def register_codecs(register):
    register(PCA)
