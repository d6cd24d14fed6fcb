"""Exceptions kvcodec raises for bad input.

Every error a user can provoke with bad input (a spec string, a payload file, a plugin)
is a subclass of :class:`KVCodecError`, whose message is one line that names what is
wrong. The CLI prints that line and exits with status 2 (arguments) or 1 (data).
"""

from __future__ import annotations


class KVCodecError(Exception):
    """Base class of the errors kvcodec raises for bad input."""


class SpecError(KVCodecError, ValueError):
    """A pipeline spec string is malformed.

    ``str(err)`` is one line quoting the offending part and its column (0-based) in the
    spec; :attr:`spec`, :attr:`column` and :attr:`reason` hold the parts.
    """

    def __init__(self, spec: str, column: int, fragment: str, reason: str):
        self.spec, self.column, self.fragment, self.reason = spec, column, fragment, reason
        super().__init__(f"bad pipeline spec {spec!r} at column {column} ({fragment!r}): {reason}")


class CodecError(KVCodecError, ValueError):
    """A codec cannot encode the given cache (e.g. a group size that does not divide head_dim)."""


class DecodeError(KVCodecError, ValueError):
    """A payload cannot be decoded: truncated, bad magic, unsupported version, unknown codec,
    checksum mismatch, inconsistent geometry or an out-of-range length."""


class PluginError(KVCodecError, RuntimeError):
    """The plugin registry is inconsistent (e.g. two plugins register one codec name)."""


class ModelError(KVCodecError, RuntimeError):
    """A model cannot be fetched, verified or loaded."""
