"""Split a ``key=value,key=value`` option list, as used by channel and transport specs.

Items are separated by commas; whitespace around items, keys and values is ignored; a
value may contain ``=`` (the first ``=`` splits) but not a comma. Keys are case-sensitive.
"""

from __future__ import annotations

from kvcodec_sim.errors import LinkSpecError, quoted

__all__ = ["split_options"]


def split_options(items: list[str], what: str, spec: str, keys: tuple[str, ...], example: str) -> dict[str, str]:
    """Turn ``["k=v", ...]`` into ``{k: v}``.

    Args:
        items: the comma-separated items of ``spec``.
        what: what the spec describes ("link spec", "ARQ options"), for messages.
        spec: the whole text, quoted in messages.
        keys: the accepted keys, listed in messages.
        example: a valid spec, shown in messages.

    Raises:
        LinkSpecError: an item is empty or has no ``=``, a key is unknown or repeated, or a
            value is empty (one line quoting ``spec`` and listing the keys).
    """
    options: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not item.strip():
            reason = "empty item (two commas in a row, or a trailing comma)"
        elif not sep:
            reason = f"{quoted(item.strip())} is not key=value"
        elif key not in keys:
            reason = f"unknown option {quoted(key)}; options are {', '.join(keys)}"
        elif key in options:
            reason = f"option {key!r} given twice"
        elif not value:
            reason = f"option {key!r} has no value"
        else:
            options[key] = value
            continue
        raise LinkSpecError(f"invalid {what} {quoted(spec)}: {reason}; e.g. {example}")
    return options
