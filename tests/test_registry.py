"""The plugin registry (``kvcodec.plugins``): built-ins registered through the same hook as
third-party plugins; entry-point plugins (simulated by monkeypatching
``importlib.metadata.entry_points``); duplicate names → PluginError naming both providers;
a plugin that fails to import → PluginWarning naming it while the others still load;
``KVCODEC_PLUGINS`` limits which plugins load."""

from __future__ import annotations

import importlib.metadata
import types
import warnings

import attrs
import pytest
import torch

import kvcodec
from kvcodec import Form, PluginError, TensorStage, hookimpl
from kvcodec import plugins as plugins_mod
from kvcodec.plugins import BUILTIN_PLUGINS, BUILTIN_PROVIDER, ENV_VAR, PluginWarning, build_registry, get_registry, reset_registry

pytestmark = pytest.mark.usefixtures("fresh_registry")


def make_stage(name: str, family: str = "transform"):
    @attrs.frozen
    class Stage(TensorStage):
        accepts = Form.FLOAT
        produces = Form.FLOAT
        lossless = True

        def encode(self, x):
            return x, {}

        def decode(self, y, side):
            return y

    Stage.name = name
    Stage.family = family
    Stage.__name__ = Stage.__qualname__ = f"Stage_{name}"
    return Stage


def make_plugin(modname: str, *classes):
    mod = types.ModuleType(modname)

    @hookimpl
    def register_codecs(register):
        for cls in classes:
            register(cls)

    mod.register_codecs = register_codecs
    return mod


class FakeDist:
    def __init__(self, name: str, version: str):
        self.name, self.version = name, version


class FakeEntryPoint:
    def __init__(self, name: str, dist: str | None, version: str, target):
        self.name = name
        self.dist = FakeDist(dist, version) if dist else None
        self.group = "kvcodec"
        self._target = target

    def load(self):
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


@pytest.fixture
def entry_points(monkeypatch):
    """Replace the installed entry points with a list the test controls."""
    eps: list[FakeEntryPoint] = []

    def fake(**kw):
        assert kw == {"group": "kvcodec"}
        return list(eps)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    monkeypatch.delenv(ENV_VAR, raising=False)
    return eps


# ----------------------------------------------------------------------------- built-ins
def test_builtins_are_registered_like_plugins(entry_points):
    reg = build_registry()
    assert {"int", "sign", "identity", "fp16"} <= set(reg.names())
    assert reg.names() == sorted(reg.names())
    for name in ("int", "sign", "identity", "fp16"):
        info = reg.get(name)
        assert info.provider == BUILTIN_PROVIDER
        assert info.plugin == "kvcodec_builtins.quant"
        assert info.name == name
    assert reg.get("int").family == reg.get("sign").family == "quantizer"
    assert reg.get("fp16").family == reg.get("identity").family == "cast"
    assert reg.get("nope") is None
    assert reg.loaded == tuple(sorted(BUILTIN_PLUGINS)) and reg.failed == ()


def test_get_registry_is_cached_and_resettable(entry_points):
    a = get_registry()
    assert get_registry() is a
    reset_registry()
    assert get_registry() is not a


# ----------------------------------------------------------------------------- entry points
def test_entry_point_plugins_load_with_their_distribution(entry_points):
    entry_points.append(FakeEntryPoint("alpha", "kvcodec-alpha", "1.2.3", make_plugin("alpha_mod", make_stage("alpha_t"))))
    entry_points.append(FakeEntryPoint("beta", None, "?", make_plugin("beta_mod", make_stage("beta_t"))))
    reg = build_registry()
    assert reg.get("alpha_t").provider == "kvcodec-alpha 1.2.3"
    assert reg.get("alpha_t").plugin == "alpha"
    assert reg.get("beta_t").provider == "? ?"
    assert set(reg.loaded) == {*BUILTIN_PLUGINS, "alpha", "beta"}


def test_plugin_codecs_are_usable_from_specs_and_the_wire(entry_points):
    entry_points.append(FakeEntryPoint("alpha", "kvcodec-alpha", "1.0", make_plugin("alpha_mod", make_stage("passthru"))))
    reset_registry()
    cache = kvcodec.KVCache([kvcodec.LayerKV.contiguous(torch.ones(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))])
    data = kvcodec.encode(cache, "passthru+int8")
    assert kvcodec.inspect(data).layers[0].keys == "passthru+int8"
    assert torch.equal(kvcodec.decode(data)[0].keys, torch.ones(1, 1, 2, 4))


def test_duplicate_names_across_plugins_name_both_providers(entry_points):
    entry_points.append(FakeEntryPoint("alpha", "kvcodec-alpha", "1.0", make_plugin("alpha_mod", make_stage("dupe"))))
    entry_points.append(FakeEntryPoint("beta", "kvcodec-beta", "2.0", make_plugin("beta_mod", make_stage("dupe"))))
    with pytest.raises(PluginError) as info:
        build_registry()
    msg = str(info.value)
    assert "'dupe' is registered twice" in msg
    assert "alpha (kvcodec-alpha 1.0)" in msg and "beta (kvcodec-beta 2.0)" in msg


def test_duplicate_of_a_builtin_name(entry_points):
    entry_points.append(FakeEntryPoint("evil", "kvcodec-evil", "0.1", make_plugin("evil_mod", make_stage("int"))))
    with pytest.raises(PluginError, match=r"'int' is registered twice: by kvcodec_builtins.quant \(kvcodec \(built-in\)\) and by evil \(kvcodec-evil 0.1\)"):
        build_registry()


def test_duplicate_within_builtin_plugins(monkeypatch, entry_points):
    import sys

    mod = make_plugin("kvcodec_test_builtin_dupe", make_stage("fp16"))
    monkeypatch.setitem(sys.modules, "kvcodec_test_builtin_dupe", mod)
    monkeypatch.setattr(plugins_mod, "BUILTIN_PLUGINS", ("kvcodec_builtins.quant", "kvcodec_test_builtin_dupe"))
    with pytest.raises(PluginError, match="'fp16' is registered twice") as info:
        build_registry()
    assert "kvcodec_builtins.quant" in str(info.value) and "kvcodec_test_builtin_dupe" in str(info.value)


def test_failing_plugin_warns_and_the_others_load(entry_points):
    entry_points.append(FakeEntryPoint("broken", "kvcodec-broken", "0.3", ImportError("No module named 'numpyy'")))
    entry_points.append(FakeEntryPoint("good", "kvcodec-good", "1.0", make_plugin("good_mod", make_stage("good_t"))))
    entry_points.append(FakeEntryPoint("crashy", "kvcodec-crashy", "0.1", RuntimeError("boom at import")))
    with pytest.warns(PluginWarning) as record:
        reg = build_registry()
    messages = [str(w.message) for w in record]
    assert any("broken (kvcodec-broken 0.3) failed to load" in m and "ImportError" in m and "numpyy" in m for m in messages)
    assert any("crashy (kvcodec-crashy 0.1)" in m and "boom at import" in m for m in messages)
    assert reg.get("good_t") is not None and reg.get("int") is not None
    assert reg.failed == ("broken (kvcodec-broken 0.3)", "crashy (kvcodec-crashy 0.1)")
    assert "broken" not in reg.loaded and "good" in reg.loaded


def test_same_module_twice_is_reported_not_fatal(entry_points):
    mod = make_plugin("twice_mod", make_stage("twice_t"))
    entry_points.append(FakeEntryPoint("one", "d1", "1", mod))
    entry_points.append(FakeEntryPoint("two", "d2", "1", mod))
    with pytest.warns(PluginWarning, match="two"):
        reg = build_registry()
    assert reg.get("twice_t").plugin == "one"


def test_registering_a_non_stage_is_a_plugin_error(entry_points):
    entry_points.append(FakeEntryPoint("bad", "kvcodec-bad", "1", make_plugin("bad_mod", int)))
    with pytest.raises(PluginError, match=r"plugin bad \(kvcodec-bad 1\) registered .*not an attrs stage class"):
        build_registry()


def test_registering_a_stage_without_a_name_is_a_plugin_error(entry_points):
    nameless = make_stage("x")
    nameless.name = ""
    entry_points.append(FakeEntryPoint("anon", "kvcodec-anon", "1", make_plugin("anon_mod", nameless)))
    with pytest.raises(PluginError, match="without a name"):
        build_registry()


# ----------------------------------------------------------------------------- KVCODEC_PLUGINS
@pytest.fixture
def three(entry_points):
    for ep, dist in (("alpha", "kvcodec-alpha"), ("beta", "kvcodec-beta"), ("gamma", "kvcodec-gamma")):
        entry_points.append(FakeEntryPoint(ep, dist, "1.0", make_plugin(f"{ep}_mod", make_stage(f"{ep}_t"))))
    return entry_points


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (None, {"alpha_t", "beta_t", "gamma_t"}),
        ("alpha", {"alpha_t"}),
        ("alpha, gamma", {"alpha_t", "gamma_t"}),
        ("kvcodec-beta", {"beta_t"}),  # distribution names work too
        ("beta,kvcodec-gamma,", {"beta_t", "gamma_t"}),
        ("", set()),
        (" , ", set()),
        ("nothing-installed", set()),
    ],
)
def test_env_var_restricts_loading(three, monkeypatch, env, expected):
    if env is not None:
        monkeypatch.setenv(ENV_VAR, env)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # skipped plugins are not failures
        reg = build_registry()
    got = {n for n in reg.names() if n.endswith("_t")}
    assert got == expected
    assert reg.get("int") is not None  # built-ins always load
    assert reg.failed == ()


def test_env_var_does_not_import_unselected_plugins(entry_points, monkeypatch):
    entry_points.append(FakeEntryPoint("broken", "kvcodec-broken", "0.3", ImportError("should not be imported")))
    monkeypatch.setenv(ENV_VAR, "")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg = build_registry()
    assert reg.failed == ()


def test_a_plugin_whose_hook_raises_is_reported_and_skipped(monkeypatch):
    """A third-party hook that raises must not disable kvcodec: the plugin is listed as
    failed (with a PluginWarning naming it) and the built-in codecs still load."""
    import types
    import warnings

    import kvcodec.plugins as plugins

    broken = types.ModuleType("broken_plugin")

    @kvcodec.hookimpl
    def register_codecs(register):
        raise RuntimeError("plugin bug inside hook")

    broken.register_codecs = register_codecs
    real = plugins.make_plugin_manager

    def with_broken():
        pm, providers, failed = real()
        pm.register(broken, name="broken_plugin")
        providers["broken_plugin"] = "broken-dist 0.1"
        return pm, providers, failed

    monkeypatch.setattr(plugins, "make_plugin_manager", with_broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = plugins.build_registry()
    assert "int" in reg.codecs and any("broken_plugin" in f for f in reg.failed)
    assert any("broken_plugin" in str(w.message) and "plugin bug inside hook" in str(w.message) for w in caught)
