"""The plugin manager and the codec registry built from it.

Built-in codec families are registered exactly like external plugins (through the
``register_codecs`` hook); external plugins come from the entry-point group ``kvcodec``.
``KVCODEC_PLUGINS`` limits which external plugins load: a comma-separated list of
entry-point or distribution names (empty: none). A plugin that fails to import is
reported in a :class:`PluginWarning` naming it, and the others still load.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings

import attrs
import pluggy

from kvcodec import hookspecs
from kvcodec.codec import CacheStage, Stage, TensorStage
from kvcodec.errors import PluginError

ENTRY_POINT_GROUP = "kvcodec"
ENV_VAR = "KVCODEC_PLUGINS"
BUILTIN_PROVIDER = "kvcodec (built-in)"
BUILTIN_PLUGINS: tuple[str, ...] = (
    "kvcodec_builtins.quant",
    "kvcodec_builtins.delta",
    "kvcodec_builtins.lowrank",
    "kvcodec_builtins.entropy",
    "kvcodec_builtins.select",
    "kvcodec_builtins.progressive",
)


class PluginWarning(UserWarning):
    """A plugin could not be loaded; the others were."""


@attrs.frozen
class CodecInfo:
    """A registered codec: its class and where it came from."""

    cls: type[Stage]
    provider: str  # distribution name and version, or "kvcodec (built-in)"
    plugin: str  # plugin (module / entry point) name

    @property
    def name(self) -> str:
        return self.cls.name

    @property
    def family(self) -> str:
        return self.cls.family


@attrs.frozen
class Registry:
    """Codec name → :class:`CodecInfo`, plus the plugins that loaded, those that failed
    and those that ``KVCODEC_PLUGINS`` left out.

    Attributes:
        codecs: codec name → :class:`CodecInfo`.
        loaded: names of the plugins that loaded (built-in modules and entry points).
        failed: ``"name (distribution version)"`` of plugins that failed to load.
        skipped: ``"name (distribution version)"`` of installed entry-point plugins that
            ``KVCODEC_PLUGINS`` did not select (not imported).
        providers: plugin name → provider (``"kvcodec (built-in)"`` or distribution and
            version) for every loaded plugin.
    """

    codecs: dict[str, CodecInfo]
    loaded: tuple[str, ...]
    failed: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    providers: dict[str, str] = attrs.field(factory=dict)

    def get(self, name: str) -> CodecInfo | None:
        return self.codecs.get(name)

    def names(self) -> list[str]:
        return sorted(self.codecs)


def _selected() -> set[str] | None:
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def _not_selected() -> tuple[str, ...]:
    """``"name (distribution version)"`` of the entry-point plugins ``KVCODEC_PLUGINS``
    leaves out (none when it is unset); nothing is imported."""
    wanted = _selected()
    if wanted is None:
        return ()
    out = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "?"
        if ep.name not in wanted and dist not in wanted:
            out.append(f"{ep.name} ({dist} {ep.dist.version if ep.dist else '?'})")
    return tuple(out)


def make_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, str], list[str]]:
    """A fresh plugin manager with built-in and entry-point plugins registered.

    Returns the manager, plugin name → provider, and the names of plugins that failed.
    """
    pm = pluggy.PluginManager("kvcodec")
    pm.add_hookspecs(hookspecs)
    providers: dict[str, str] = {}
    failed: list[str] = []
    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
        providers[modname] = BUILTIN_PROVIDER
    wanted = _selected()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        if wanted is not None and ep.name not in wanted and dist not in wanted:
            continue
        label = f"{ep.name} ({dist} {version})"
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - any failure of a third-party import is reported, not fatal
            failed.append(label)
            warnings.warn(
                f"kvcodec plugin {label} failed to load: {type(exc).__name__}: {exc}", PluginWarning, stacklevel=2
            )
            continue
        providers[ep.name] = f"{dist} {version}"
    return pm, providers, failed


def build_registry() -> Registry:
    """Load every plugin and collect the codecs each registers.

    Raises:
        PluginError: if two plugins register the same codec name (both are named), or a
            plugin registers something that is not a stage class.
    """
    pm, providers, failed = make_plugin_manager()
    codecs: dict[str, CodecInfo] = {}
    for impl in pm.hook.register_codecs.get_hookimpls():
        provider = providers.get(impl.plugin_name, impl.plugin_name)

        def register(cls, _plugin=impl.plugin_name, _provider=provider):
            if not (isinstance(cls, type) and issubclass(cls, (TensorStage, CacheStage)) and attrs.has(cls)):
                raise PluginError(f"plugin {_plugin} ({_provider}) registered {cls!r}, which is not an attrs stage class")
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {_plugin} ({_provider}) registered {cls.__name__} without a name")
            if name in codecs:
                other = codecs[name]
                raise PluginError(
                    f"codec name {name!r} is registered twice: by {other.plugin} ({other.provider})"
                    f" and by {_plugin} ({_provider})"
                )
            try:
                cls.param_types()  # fail early on unsupported parameter types
            except TypeError as exc:
                raise PluginError(f"plugin {_plugin} ({_provider}) registered {name!r}: {exc}") from None
            codecs[name] = CodecInfo(cls, _provider, _plugin)

        before = dict(codecs)
        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken third-party hook must not disable kvcodec
            codecs.clear()
            codecs.update(before)  # drop whatever the broken plugin registered
            label = f"{impl.plugin_name} ({provider})"
            failed.append(label)
            providers.pop(impl.plugin_name, None)
            warnings.warn(f"kvcodec plugin {label} failed in register_codecs: {type(exc).__name__}: {exc}",
                          PluginWarning, stacklevel=2)
    return Registry(codecs, tuple(sorted(providers)), tuple(failed), _not_selected(), dict(providers))


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built once on first use."""
    global _registry
    if _registry is None:
        _registry = build_registry()
    return _registry


def plugin_report(registry: Registry) -> list[str]:
    """Lines for ``kvcodec plugins``: which plugins loaded (with their providers and the
    codecs each registered), what ``KVCODEC_PLUGINS`` selected and left out, and which
    plugins failed."""
    by_plugin: dict[str, list[str]] = {}
    for info in registry.codecs.values():
        by_plugin.setdefault(info.plugin, []).append(info.name)
    order = sorted(registry.loaded, key=lambda n: (registry.providers.get(n) != BUILTIN_PROVIDER, n))
    width = max((len(n) for n in order), default=0)
    pwidth = max((len(registry.providers.get(n, "?")) for n in order), default=0)
    lines = [f"plugins loaded ({len(order)}):"]
    for name in order:
        codecs = ", ".join(sorted(by_plugin.get(name, []))) or "no codecs"
        lines.append(f"  {name:<{width}}  {registry.providers.get(name, '?'):<{pwidth}}  {codecs}")
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        lines.append(f"{ENV_VAR} is not set: every installed plugin is loaded")
    else:
        left = ", ".join(registry.skipped) or "none"
        lines.append(f"{ENV_VAR}={raw!r} selects the external plugins; not loaded: {left}")
    if registry.failed:
        lines.append("failed to load: " + ", ".join(registry.failed))
    return lines


def reset_registry() -> None:
    """Forget the cached registry (tests, or after installing a plugin at run time)."""
    global _registry
    _registry = None
