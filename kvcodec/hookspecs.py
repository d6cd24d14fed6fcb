"""The whole contract between kvcodec and its plugins: the hooks a plugin implements.

A plugin is a module (or object) with functions decorated ``@kvcodec.hookimpl`` whose
names match the hooks below. Third-party plugins are found through the entry-point group
``kvcodec``; kvcodec's own codec families (in ``plugins/``) are registered through the
very same hooks. See ``specs/plugins.md``.
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("kvcodec")
hookimpl = HookimplMarker("kvcodec")


@hookspec
def register_codecs(register):
    """Register codec stages: call ``register(StageClass)`` once per class.

    ``StageClass`` is a frozen attrs subclass of :class:`kvcodec.codec.TensorStage` or
    :class:`kvcodec.codec.CacheStage` with class attributes ``name`` and ``family``.
    """
