"""Follow ``docs/plugin-tutorial.md`` step by step, in a temporary folder.

The tutorial's files are its code blocks marked ``file=NAME``; its commands are the
``$ `` lines of its ``console`` blocks, and the plain block after a command shows that
command's output. This test writes the files, runs every command in order and compares
what they print with what the tutorial shows, so the tutorial cannot drift from what
works. A command this test does not know how to follow fails it.

The plugin is installed into a throwaway virtual environment layered on the current one
(it sees the installed kvcodec, torch, pytest and hypothesis through a ``.pth`` file), so
the environment running the tests is never modified, not even if the test is killed
half-way. ``kvcodec`` is run as ``python -m kvcodec`` in that environment; the commands
that would load a model (``simulate``, ``eval``) are run up to the point where the
pipeline has been parsed (see :func:`_pipeline_accepted`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "plugin-tutorial.md"
TIMEOUT = 300


@attrs.frozen
class Block:
    lang: str
    options: tuple[str, ...]
    body: str

    def option(self, key: str) -> str | None:
        for opt in self.options:
            k, _, v = opt.partition("=")
            if k == key:
                return v or k
        return None


def parse_blocks(text: str) -> list[Block]:
    """Fenced code blocks, in order: language, the rest of the info string, body."""
    out = []
    for m in re.finditer(r"^```([^\n]*)\n(.*?)^```\s*$", text, flags=re.S | re.M):
        info = m.group(1).split()
        out.append(Block(info[0] if info else "", tuple(info[1:]), m.group(2)))
    return out


def steps(blocks: list[Block]) -> list[tuple[str, str | None]]:
    """(command, the output the tutorial shows for it or None), in order."""
    out: list[tuple[str, str | None]] = []
    for i, block in enumerate(blocks):
        if block.lang == "console":
            commands = [line[2:].strip() for line in block.body.splitlines() if line.startswith("$ ")]
            after = blocks[i + 1] if i + 1 < len(blocks) else None
            shown = after.body if after is not None and after.lang == "" else None
            out += [(c, None) for c in commands[:-1]] + [(commands[-1], shown)]
        elif block.lang == "python" and block.option("run"):
            after = blocks[i + 1] if i + 1 < len(blocks) else None
            out.append(("<python block>\n" + block.body, after.body if after is not None and after.lang == "" else None))
    return out


def _match_shown(shown: str, actual: str) -> None:
    """Every line the tutorial shows appears in the actual output, comparing whitespace-
    and box-drawing-insensitively; ``…`` in a shown line stands for anything."""
    norm = lambda s: " ".join(s.replace("│", " ").split())  # noqa: E731
    lines = [norm(l) for l in actual.splitlines()]
    for want in shown.splitlines():
        w = norm(want)
        if not w or w == "…":
            continue
        pattern = ".*".join(re.escape(part.strip()) for part in w.split("…"))
        assert any(re.search(pattern, line) for line in lines), f"the tutorial shows {want!r}; the output lacks it:\n{actual}"


# ----------------------------------------------------------------------------- environment
@pytest.fixture
def child_python(tmp_path):
    """A virtual environment in ``tmp_path`` layered on this one; removed afterwards."""
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=TIMEOUT)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=TIMEOUT,
    ).stdout.strip()
    parents = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "_kvcodec_parent_env.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in sorted(parents)) + "\n"
    )
    yield python
    shutil.rmtree(env_dir, ignore_errors=True)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KVCODEC_PLUGINS", "PYTHONPATH")}
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=_env(**extra), capture_output=True, text=True, timeout=TIMEOUT)


def _ok(proc: subprocess.CompletedProcess, what: str) -> str:
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _has_setuptools() -> bool:
    """Without setuptools here, pip builds the plugin in an isolated environment (it fetches
    setuptools from the package index)."""
    import importlib.util

    return importlib.util.find_spec("setuptools") is not None


# kvcodec's command line, several invocations in one process (starting torch costs seconds)
CLI_BATCH = textwrap.dedent(
    """
    import json, sys
    from click.testing import CliRunner
    from kvcodec.cli import cli
    from kvcodec.plugins import reset_registry
    out = []
    for args, env in json.loads(sys.argv[1]):
        reset_registry()
        r = CliRunner().invoke(cli, args, env=env)
        out.append({"code": r.exit_code, "output": r.output})
    print(json.dumps(out))
    """
)


def _cli(python: Path, cwd: Path, calls: list[tuple[list[str], dict[str, str | None]]]) -> list[dict]:
    proc = _ok(_run([python, "-c", CLI_BATCH, json.dumps(calls)], cwd), "kvcodec commands")
    return json.loads(proc.splitlines()[-1])


def _pipeline_accepted(python: Path, cwd: Path, args: list[str], codec: str) -> None:
    """``kvcodec simulate`` / ``eval`` accept the pipeline: run with a model path that does
    not exist, so the command stops right after parsing its arguments — with an error
    about the model, not about the pipeline. The same command with the codec's name
    replaced must fail on the pipeline (so the first run really got past it)."""
    missing = str(cwd / "no-such-model.gguf")
    data = cwd / "data"
    data.mkdir(exist_ok=True)
    fixed: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--model", "--data-dir", "--results"):
            skip = True
            continue
        fixed.append(a)
    fixed += ["--model", missing]
    if args[0] == "eval":
        fixed += ["--data-dir", str(data), "--results", str(cwd / "results.jsonl")]
    broken = [a.replace(codec, "no_such_codec") if prev == "--pipeline" else a for prev, a in zip([""] + fixed, fixed)]
    assert broken != fixed, f"{args}: no --pipeline names {codec}"
    good, bad = _cli(python, cwd, [(fixed, {}), (broken, {})])
    assert good["code"] == 2 and "unknown model" in good["output"] and "pipeline spec" not in good["output"], good
    assert bad["code"] == 2 and "bad pipeline spec" in bad["output"] and "unknown codec" in bad["output"], bad


# ----------------------------------------------------------------------------- the test
def test_tutorial_blocks_parse():
    blocks = parse_blocks(TUTORIAL.read_text(encoding="utf-8"))
    files = [b.option("file") for b in blocks if b.option("file")]
    assert files == ["kvcodec_bfloat16.py", "pyproject.toml", "tests/test_bfloat16.py"]
    commands = [c.split("\n")[0] for c, _ in steps(blocks)]
    assert commands[0].startswith("mkdir ") and commands[-1].startswith("python -m pip uninstall")
    for block in blocks:
        if block.lang == "python":
            compile(block.body, block.option("file") or "<run>", "exec")


def test_follow_the_tutorial(tmp_path, child_python):
    text = TUTORIAL.read_text(encoding="utf-8")
    blocks = parse_blocks(text)
    files = {b.option("file"): b.body for b in blocks if b.option("file")}
    python = child_python
    project: Path | None = None
    codec = dist = None
    done: list[str] = []

    for command, shown in steps(blocks):
        if command.startswith("<python block>"):
            assert project is not None
            out = _ok(_run([python, "-c", command.split("\n", 1)[1]], project), "the tutorial's Python block")
            if shown:
                _check_table(shown, out)
            done.append("python")
            continue
        words = shlex.split(command)
        env_prefix = {}
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            key, _, value = words.pop(0).partition("=")
            env_prefix[key] = value
        if words[:1] == ["mkdir"]:
            # "mkdir NAME && cd NAME": the package folder, then the files the tutorial shows
            project = tmp_path / words[1]
            project.mkdir()
            for name, body in files.items():
                (project / name).parent.mkdir(parents=True, exist_ok=True)
                (project / name).write_text(body, encoding="utf-8")
            meta = re.search(r'^name = "([^"]+)"', files["pyproject.toml"], flags=re.M)
            ep = re.search(r"^\[project\.entry-points\.kvcodec\]\n(\w+) = ", files["pyproject.toml"], flags=re.M)
            dist, codec = meta.group(1), ep.group(1)
        elif words[:4] == ["python", "-m", "pip", "install"]:
            assert words[4:] == ["-e", "."], command
            flags = ["--no-deps"] + (["--no-build-isolation"] if _has_setuptools() else [])
            _ok(_run([python, "-m", "pip", "install", "-q", *flags, "-e", project], project), command)
        elif words[:4] == ["python", "-m", "pip", "uninstall"]:
            _ok(_run([python, "-m", "pip", "uninstall", "-y", *words[4:]], project), command)
            listing = "import importlib.metadata as m; print([e.name for e in m.entry_points(group='kvcodec')])"
            left = _ok(_run([python, "-c", listing], project), "listing entry points")
            assert codec not in left, f"{codec} is still installed after {command!r}: {left}"
        elif words[:2] == ["kvcodec", "plugins"]:
            (res,) = _cli(python, project, [(words[1:], env_prefix)])
            assert res["code"] == 0, res
            out = res["output"]
            row = next((l for l in out.splitlines() if l.startswith(f"│ {codec} ")), None)
            assert row is not None and f"{dist} 0.1.0" in row and "float → float" in row, out
            if env_prefix.get("KVCODEC_PLUGINS") == dist:
                assert "negate" not in [l.split("│")[1].strip() for l in out.splitlines() if l.startswith("│ ")]
            if shown:
                _match_shown(shown, out)
        elif words[:3] == ["python", "-m", "pytest"]:
            out = _ok(_run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *words[3:]], project), command)
            assert re.search(r"\d+ passed", out) and "failed" not in out, out
        elif words[:1] == ["kvcodec"] and words[1] in ("simulate", "eval"):
            _pipeline_accepted(python, project, words[1:], codec)
        else:
            pytest.fail(f"the tutorial has a command this test does not follow: {command!r}")
        done.append(words[0] if words[0] != "python" else " ".join(words[:4]))
    assert project is not None and "python" in done


def _check_table(shown: str, actual: str) -> None:
    """The Python block prints one line per spec: spec, bytes (exact), error (within 25 %)."""
    def rows(text: str) -> dict[str, tuple[int, float]]:
        out = {}
        for line in text.splitlines():
            m = re.match(r"(.+?)\s+([\d,]+) bytes\s+max value error (\S+)", line.strip())
            if m:
                out[m.group(1)] = (int(m.group(2).replace(",", "")), float(m.group(3)))
        return out

    want, got = rows(shown), rows(actual)
    assert want and set(want) == set(got), f"shown:\n{shown}\nactual:\n{actual}"
    for spec, (nbytes, err) in want.items():
        assert got[spec][0] == nbytes, f"{spec}: the tutorial says {nbytes} bytes, the code gives {got[spec][0]}"
        assert got[spec][1] == pytest.approx(err, rel=0.25), f"{spec}: error {got[spec][1]} vs the tutorial's {err}"
