"""The contract suite catches every fault planted in ``tests/broken_codecs.py``.

Each broken codec is run through the whole suite (:func:`kvcodec.testing.run_contract`)
and the check that must catch its fault has to fail. What each one tripped when this
was written (the suite as it is now):

======================  ====================================  =================================
codec                   fault                                 failed checks
======================  ====================================  =================================
LyingWidth              codes 0…16 reported as 4-bit          forms, accuracy, byte_count
HiddenSideChannel       tensor kept in the process            self_contained
ChangedShape            heads folded into tokens              round_trip, accuracy, non_finite
CrashOnTruncation       struct.error on short bytes           corruption, damaged_input
NonDeterministic        stochastic rounding, global RNG       deterministic
ContiguousOnly *        x.view(-1) on a non-contiguous cache  forms, round_trip, accuracy,
                                                              byte_count, deterministic,
                                                              non_finite
NarrowIndex *           token permutation as uint8            accuracy
Pow2Hadamard *          power-of-two head_dim assumed         accuracy
SilentDowncast          "lossless" bfloat16 cast              accuracy
UnvalidatedBits         no validator on bits                  parameters
InPlaceDecode           decode rescales its input in place    accuracy, damaged_input
ZeroStrideHang          stride 0 or −1 from the wire: hang    damaged_input
======================  ====================================  =================================

(*) planted after the suite was written and missed by its first version: its caches
were all contiguous, short and of power-of-two head dims; see ``MISSED_AT_FIRST``.

The fresh-process check (a Python subprocess, seconds) runs only for the fault it must
catch. A last test runs two broken codecs through :class:`~kvcodec.testing.CodecContract`
in pytest itself, as an author would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import broken_codecs as bc
from kvcodec.testing import CHECKS, run_contract

CASES = list(bc.FAULTS.items()) + list(bc.FAULTS_PLANTED_LATER.items())

#: every check each fault trips (the table above; self_contained is only run for the
#: fault it must catch)
TRIPPED = {
    bc.LyingWidth: {"forms", "accuracy", "byte_count"},
    bc.HiddenSideChannel: {"self_contained"},
    bc.ChangedShape: {"round_trip", "accuracy", "non_finite"},
    bc.CrashOnTruncation: {"corruption", "damaged_input"},
    bc.NonDeterministic: {"deterministic"},
    bc.ContiguousOnly: {"forms", "round_trip", "accuracy", "byte_count", "deterministic", "non_finite"},
    bc.NarrowIndex: {"accuracy"},
    bc.Pow2Hadamard: {"accuracy"},
    bc.SilentDowncast: {"accuracy"},
    bc.UnvalidatedBits: {"parameters"},
    # both are built on a float16 decode, so values beyond ±65504 also come back as inf
    bc.InPlaceDecode: {"accuracy", "damaged_input", "round_trip"},
    bc.ZeroStrideHang: {"accuracy", "damaged_input", "round_trip"},
}


@pytest.mark.parametrize(("cls", "check"), CASES, ids=[c.__name__ for c, _ in CASES])
def test_the_suite_catches_the_planted_fault(cls, check):
    checks = [c for c in CHECKS if c != "self_contained" or check == "self_contained"]
    report = run_contract(cls.name, extra_codecs=[cls], checks=checks, decode_timeout=2.0)
    assert check in report.failed, f"{cls.__name__}: the {check} check did not catch the fault\n{report}"
    assert set(report.failed) == TRIPPED[cls], report


def test_the_three_faults_planted_later_are_real():
    """The faults the first suite missed only show on the geometries added for them:
    each codec works on a short, contiguous cache with power-of-two head dims."""
    import torch

    import kvcodec
    from kvcodec.spec import parse
    from kvcodec.testing import make_cache, registry_with

    reg = registry_with(*bc.MISSED_AT_FIRST)
    easy = make_cache(seed=3, layers=2, heads=2, seq=20, head_dim=16, dtype=torch.float16)
    for cls in bc.MISSED_AT_FIRST:
        out = kvcodec.decode(kvcodec.encode(easy, parse(cls.name, reg)), registry=reg)
        for a, b in zip(easy, out):
            assert torch.allclose(a.keys.float(), b.keys.float(), atol=1e-3), cls.__name__


def test_broken_codecs_fail_under_pytest(tmp_path):
    """An author's view: CodecContract subclasses for two broken codecs, run by pytest."""
    module = tmp_path / "test_broken.py"
    module.write_text(
        textwrap.dedent(
            """
            import broken_codecs as bc
            from kvcodec.testing import CodecContract

            class TestLyingWidth(CodecContract):
                spec = bc.LyingWidth.name
                extra_codecs = (bc.LyingWidth,)
                max_examples = 5

            class TestCrashOnTruncation(CodecContract):
                spec = bc.CrashOnTruncation.name
                extra_codecs = (bc.CrashOnTruncation,)
                max_examples = 5
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "KVCODEC_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(module), "-q", "-rf", "-p", "no:cacheprovider", "-k", "not self_contained"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    failed = {line.split(" ")[1].split("::", 1)[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")}
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert {
        "TestLyingWidth::test_byte_count",
        "TestLyingWidth::test_encode_returns_declared_forms",
        "TestCrashOnTruncation::test_damaged_stage_input",
    } <= failed, proc.stdout
    assert not {"TestLyingWidth::test_declaration", "TestCrashOnTruncation::test_round_trip_keeps_geometry"} & failed
    assert "[byte_count] broken_lying_width" in proc.stdout


# ------------------------------------------------------------------ part 3: planted blind
@pytest.mark.parametrize("name", ["blind_a", "blind_b", "blind_c"])
def test_the_suite_catches_the_blind_faults_and_passes_their_fixed_twins(name):
    """Faults planted by someone who had not read the suite (tests/blind_faults.py); each
    has a twin that differs only by the one-line fix."""
    import blind_faults as bf

    checks = ("round_trip", "accuracy")
    faulty = run_contract(name, extra_codecs=bf.ALL, checks=checks)
    assert "accuracy" in faulty.failed, faulty
    fixed = run_contract(f"{name}_fixed", extra_codecs=bf.ALL, checks=checks)
    assert not fixed.failed, fixed
