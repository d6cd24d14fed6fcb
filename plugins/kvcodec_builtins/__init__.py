"""kvcodec's built-in codec families. Each subpackage is a plugin registered through the
same ``register_codecs`` hook a third-party plugin uses (see ``kvcodec.plugins``)."""
