"""The provenance commit of every record: from git in a checkout, from the ``git archive``
substitution outside one (the copy the H200 runs use), else "unknown"."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from kvcodec.results import _commit

ROOT = Path(__file__).resolve().parents[1]


def test_a_checkout_reports_its_head():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    assert _commit().split("-")[0] == head.stdout.strip()


def test_the_placeholder_of_a_plain_copy_is_unknown(tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "kvcodec/data/archive_commit.txt", tmp_path / "data")  # unsubstituted: $Format:%H$
    assert _commit(tmp_path) == "unknown"
    (tmp_path / "data/archive_commit.txt").unlink()
    assert _commit(tmp_path) == "unknown"


def test_git_archive_writes_the_commit(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    tar = tmp_path / "src.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(tar), "HEAD", "kvcodec/data"], check=True)
    with tarfile.open(tar) as archive:
        archive.extractall(tmp_path / "src", filter="data")
    archived = tmp_path / "src" / "kvcodec"
    placeholder = archived / "data/archive_commit.txt"
    text = placeholder.read_text().strip() if placeholder.exists() else "$Format"
    if text.startswith("$Format"):
        pytest.skip("HEAD predates .gitattributes' export-subst for archive_commit.txt")
    assert text == head and _commit(archived) == head[:12] + "-archive"
