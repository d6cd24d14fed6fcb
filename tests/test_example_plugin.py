"""The example third-party plugin ``plugins/kvcodec-fp8`` (codec ``e4m3``), installed as
CI installs it::

    python -m pip install -e plugins/kvcodec-fp8

It is found through the ``kvcodec`` entry-point group, named with its distribution, listed
by ``kvcodec plugins``, selected or left out by ``KVCODEC_PLUGINS``, and usable from spec
strings. Its own tests (``plugins/kvcodec-fp8/tests/test_e4m3.py``: the contract suite and
FP8 specifics) are collected here as well, so the main test run covers them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import kvcodec
from kvcodec.plugins import ENV_VAR, build_registry, get_registry, reset_registry

DIST = "kvcodec-fp8"
PLUGIN_TESTS = Path(__file__).resolve().parents[1] / "plugins" / "kvcodec-fp8" / "tests" / "test_e4m3.py"

try:
    _dist = importlib.metadata.distribution(DIST)
except importlib.metadata.PackageNotFoundError:
    _dist = None

pytestmark = pytest.mark.skipif(
    _dist is None, reason=f"{DIST} is not installed; run: python -m pip install -e plugins/kvcodec-fp8"
)

if _dist is not None:
    # the plugin's own tests, collected in this module too
    _spec = importlib.util.spec_from_file_location("kvcodec_fp8_own_tests", PLUGIN_TESTS)
    _own = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_own)
    globals().update({k: v for k, v in vars(_own).items() if k.startswith(("Test", "test_"))})


@pytest.fixture(autouse=True)
def _all_plugins(monkeypatch, fresh_registry):
    monkeypatch.delenv(ENV_VAR, raising=False)


def _plugins(*args: str, env: dict[str, str] | None = None):
    reset_registry()
    result = CliRunner().invoke(_cli(), ["plugins", *args], env=env)
    reset_registry()
    assert result.exit_code == 0, result.output
    return result.output


def _cli():
    from kvcodec.cli import cli

    return cli


def _table_names(output: str) -> list[str]:
    return [line.split("│")[1].strip() for line in output.splitlines() if line.startswith("│ ")]


def test_the_distribution_declares_one_kvcodec_entry_point():
    eps = [(ep.name, ep.value) for ep in _dist.entry_points if ep.group == "kvcodec"]
    assert eps == [("e4m3", "kvcodec_fp8")]


def test_e4m3_is_registered_with_its_distribution():
    info = get_registry().get("e4m3")
    assert info is not None and info.provider == f"{DIST} {_dist.version}" and info.plugin == "e4m3"
    assert info.family == "quantizer" and not info.cls.lossless
    assert info.cls.accepts is kvcodec.Form.FLOAT and info.cls.produces is kvcodec.Form.CODES
    assert info.cls.param_types() == {"axis": str}


def test_kvcodec_plugins_lists_it_and_the_plugins_that_loaded():
    out = _plugins()
    row = next(line for line in out.splitlines() if line.startswith("│ e4m3 "))
    assert "quantizer" in row and "float → codes" in row and "axis: str" in row and f"{DIST} {_dist.version}" in row
    assert any(line.split() == ["e4m3", DIST, _dist.version, "e4m3"] for line in out.splitlines())
    assert any(line.split()[:1] == ["kvcodec_builtins.quant"] for line in out.splitlines())
    assert f"{ENV_VAR} is not set" in out


def test_kvcodec_plugins_shows_what_the_environment_variable_left_out():
    only = _plugins(env={ENV_VAR: DIST})
    assert "e4m3" in _table_names(only) and "int" in _table_names(only)
    assert f"{ENV_VAR}='{DIST}' selects the external plugins; not loaded:" in only
    installed = importlib.metadata.entry_points(group="kvcodec")
    others = [f"{ep.name} ({ep.dist.name} {ep.dist.version})" for ep in installed if ep.dist.name != DIST]
    for label in others:
        assert label in only and label.split()[0] not in _table_names(only)
    none = _plugins(env={ENV_VAR: ""})
    assert "e4m3" not in _table_names(none) and "int" in _table_names(none)
    assert f"e4m3 ({DIST} {_dist.version})" in none
    listed = json.loads(_plugins("--json", env={ENV_VAR: ""}))
    assert listed["selection"] == "" and f"e4m3 ({DIST} {_dist.version})" in listed["skipped"]
    assert "e4m3" not in [c["name"] for c in listed["codecs"]]


def test_spec_strings_use_it_and_report_bad_parameters():
    p = kvcodec.Pipeline.parse("k=e4m3:axis=channel v=int4")
    assert p.describe() == "k=e4m3:axis=channel v=int4"
    with pytest.raises(kvcodec.SpecError, match=r"column 12 \('axis=row'\): 'axis' must be in"):
        kvcodec.Pipeline.parse("int4 k=e4m3:axis=row")


def test_payloads_name_it_and_need_it_to_decode(monkeypatch):
    from kvcodec.testing import make_cache

    data = kvcodec.encode(make_cache(layers=1), "e4m3:axis=channel")
    assert kvcodec.inspect(data).layers[0].keys == "e4m3:axis=channel"
    monkeypatch.setenv(ENV_VAR, "")
    with pytest.raises(kvcodec.DecodeError, match="unknown codec 'e4m3'"):
        kvcodec.decode(data, registry=build_registry())
