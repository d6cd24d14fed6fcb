"""`kvcodec eval` end to end on CPU: every task on both real models, a few samples each."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kvcodec import cli
from kvcodec.api import as_pipeline
from kvcodec.harness import Settings, evaluate
from kvcodec.report import markdown, summarize
from kvcodec.results import FULL, ResultsFile, read_records
from kvcodec.tasks import get_task

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = [pytest.mark.model, pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present")]
TASKS = ("squad", "hotpotqa", "triviaqa", "mmlu", "needle")


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def lm(request):
    from kvcodec.models import load_model

    return load_model(request.param, device="cpu", dtype="float32")


def _samples(lm, task, n):
    options = {}
    if task.name == "needle":
        options = {"length": 512, "count_tokens": lambda t: len(lm.tokenizer(t, add_special_tokens=False)["input_ids"])}
    return task.load(DATA, n=n, seed=0, **options)


@pytest.mark.parametrize("task_name", TASKS)
def test_every_task_runs_and_resumes(lm, task_name, tmp_path):
    task = get_task(task_name)
    samples = _samples(lm, task, 2)
    pipelines = [as_pipeline("identity"), as_pipeline("int8"), as_pipeline("int2")]
    results = ResultsFile(tmp_path / "r.jsonl")
    settings = Settings(max_new_tokens=8)
    stats = evaluate(lm, task, samples, pipelines, results, settings=settings)
    assert stats.results == len(samples) * (len(pipelines) + 1) and stats.skipped == 0
    records = list(read_records([tmp_path / "r.jsonl"]))
    by = {(r["sample_id"], r["pipeline"]): r for r in records}
    for s in samples:
        full, ident = by[(s.id, FULL)], by[(s.id, "identity")]
        # identity decodes bit-exactly, so it must answer exactly like the full cache
        assert ident["prediction"] == full["prediction"] and ident["agree"]
        assert ident["bytes"] == full["bytes"] and by[(s.id, "int8")]["bytes"] < full["bytes"] / 3
        if full["nll"] is not None:
            assert ident["delta_nll"] == pytest.approx(0.0, abs=1e-6)
            assert by[(s.id, "int2")]["delta_nll"] > by[(s.id, "int8")]["delta_nll"]
        for r in (full, ident):
            assert set(r["provenance"]) >= {"kvcodec", "commit", "model_sha256", "device", "dtype", "torch", "transformers", "seed"}
            assert r["bytes"] == pytest.approx(r["bits_per_element"] * r["elements"] / 8)
    again = evaluate(lm, task, samples, pipelines, ResultsFile(tmp_path / "r.jsonl"), settings=settings)
    assert again.results == 0 and again.skipped == len(samples) * (len(pipelines) + 1)
    rows = summarize(records)
    assert {r.pipeline for r in rows} == {FULL, "identity", "int8", "int2"}
    assert "| `int8` |" in markdown(rows)


def test_batched_receiver_equals_one_by_one(lm, tmp_path):
    task = get_task("squad")
    samples = _samples(lm, task, 1)
    pipelines = [as_pipeline(s) for s in ("fp16", "int8", "int4:axis=channel", "int3")]
    one = ResultsFile(tmp_path / "one.jsonl")
    many = ResultsFile(tmp_path / "many.jsonl")
    evaluate(lm, task, samples, pipelines, one, settings=Settings(max_new_tokens=8, batch_size=1))
    evaluate(lm, task, samples, pipelines, many, settings=Settings(max_new_tokens=8, batch_size=8))
    a = {r["pipeline"]: r for r in one.records}
    b = {r["pipeline"]: r for r in many.records}
    for name in a:
        assert a[name]["prediction"] == b[name]["prediction"]
        assert a[name]["nll"] == pytest.approx(b[name]["nll"], abs=1e-3)


def test_samples_sharing_batches_equal_one_sample_at_a_time(lm, tmp_path):
    """Settings.samples_per_batch: rows of different samples (different contexts, questions,
    token selections) padded into shared batches give each sample's records unchanged."""
    task = get_task("squad")
    samples = _samples(lm, task, 3)
    pipelines = [as_pipeline(s) for s in ("int8", "q2c:keep=0.5 int8")]
    one, many = ResultsFile(tmp_path / "one.jsonl"), ResultsFile(tmp_path / "many.jsonl")
    evaluate(lm, task, samples, pipelines, one, settings=Settings(max_new_tokens=6))
    stats = evaluate(lm, task, samples, pipelines, many, settings=Settings(max_new_tokens=6, samples_per_batch=2, batch_size=5))
    assert stats.results == len(samples) * (len(pipelines) + 1)
    a = {(r["sample_id"], r["pipeline"]): r for r in one.records}
    b = {(r["sample_id"], r["pipeline"]): r for r in many.records}
    assert a.keys() == b.keys()
    for key in a:
        assert a[key]["prediction"] == b[key]["prediction"], key
        assert a[key]["bytes"] == b[key]["bytes"]
        if a[key]["nll"] is not None:
            assert a[key]["nll"] == pytest.approx(b[key]["nll"], abs=1e-3), key


def test_cli_eval_report_and_errors(tmp_path, monkeypatch):
    from kvcodec.models import load_model

    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    monkeypatch.setattr(cli, "_load", lambda *a, **k: lm)
    runner = CliRunner()
    out = tmp_path / "r.jsonl"
    args = ["eval", "--task", "mmlu", "-n", "2", "--pipeline", "int8", "--pipeline", "int4:axis=channel",
            "--data-dir", str(DATA), "--results", str(out)]
    result = runner.invoke(cli.cli, args)
    assert result.exit_code == 0, result.output
    assert "% of full" in result.output and "int4:axis=channel" in result.output
    assert len(out.read_text().splitlines()) == 6
    result = runner.invoke(cli.cli, args)
    assert "0 new results (6 already" in result.output
    md, png = tmp_path / "r.md", tmp_path / "r.png"
    result = runner.invoke(cli.cli, ["report", str(out), "--markdown", str(md), "--plot", str(png)])
    assert result.exit_code == 0 and md.read_text().count("| smollm2-135m | mmlu |") == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for bad in (["eval", "--task", "nope", "--pipeline", "int8", "--data-dir", str(DATA)],
                ["eval", "--task", "squad", "--pipeline", "int9", "--data-dir", str(DATA)],
                ["eval", "--task", "needle", "--pipeline", "int8", "--option", "depth=x", "--data-dir", str(DATA)],
                ["eval", "--task", "squad", "--data-dir", str(DATA)],
                ["report", str(tmp_path / "missing.jsonl")]):
        with pytest.raises(SystemExit) as exc:
            cli.main(bad)
        assert exc.value.code == 2


def test_sweep_grid():
    specs = cli.sweep_specs([4, 2], ["token", "channel"], ["kv", "k"], ["none", "0"], layerwise=3)
    assert "int4" in specs and "int2:axis=channel L0=identity" in specs
    assert "k=int4:axis=channel v=identity" in specs
    assert "identity L2=int2:axis=channel" in specs
    assert len(specs) == len(set(specs))
    for s in specs:
        as_pipeline(s)


def test_cli_diagnose_writes_a_recipe_that_eval_reads(tmp_path, monkeypatch):
    from kvcodec.diagnose import read_recipe
    from kvcodec.models import load_model

    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    monkeypatch.setattr(cli, "_load", lambda *a, **k: lm)
    runner = CliRunner()
    out, recipe, png = tmp_path / "d.jsonl", tmp_path / "recipe.txt", tmp_path / "map.png"
    args = ["diagnose", "--task", "squad", "-n", "1", "--max-new-tokens", "2", "--threshold", "0",
            "--data-dir", str(DATA), "--results", str(out), "--recipe", str(recipe), "--damage-map", str(png)]
    result = runner.invoke(cli.cli, args)
    assert result.exit_code == 0, result.output
    layers = lm.model.config.get_text_config().num_hidden_layers
    pipelines = {r["pipeline"] for r in read_records([out])}
    assert {f"identity L{i}.{t}=int4" for i in range(layers) for t in "kv"} <= pipelines
    (spec,) = read_recipe(recipe.read_text())
    assert spec in pipelines or as_pipeline(spec).describe() in pipelines  # verified by an eval run
    assert "verified:" in result.output and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(cli.cli, ["eval", "--task", "squad", "-n", "1", "--max-new-tokens", "2", "--pipeline-file",
                                     str(recipe), "--data-dir", str(DATA), "--results", str(out)])
    assert result.exit_code == 0 and "0 new results" in result.output
    result = runner.invoke(cli.cli, args[:-2] + ["--protect-with", "int9"])
    assert result.exit_code != 0


def test_cli_eval_processes_match_one_process(tmp_path):
    """--processes K splits the samples over K receiver processes; records are the same."""
    base = ["eval", "--model", "smollm2-135m", "--task", "mmlu", "-n", "3", "--pipeline", "int4",
            "--data-dir", str(DATA), "--device", "cpu", "--dtype", "float32"]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    runner = CliRunner()
    assert runner.invoke(cli.cli, base + ["--results", str(one)]).exit_code == 0
    result = runner.invoke(cli.cli, base + ["--results", str(two), "--processes", "2"])
    assert result.exit_code == 0, result.output
    strip = lambda r: {k: v for k, v in r.items() if k != "provenance"}  # noqa: E731
    a = {(r["sample_id"], r["pipeline"]): strip(r) for r in read_records([one])}
    b = {(r["sample_id"], r["pipeline"]): strip(r) for r in read_records([two])}
    assert len(a) == 6 and a == b
    result = runner.invoke(cli.cli, base + ["--results", str(two), "--processes", "2"])
    assert result.exit_code == 0 and len(list(read_records([two]))) == 6  # resumed: nothing new


def test_prompts_longer_than_the_model_context_are_refused_before_any_prefill(lm, monkeypatch):
    from kvcodec.cli import InputError, _check_prompt_lengths

    task = get_task("squad")
    samples = _samples(lm, task, 3)
    _check_prompt_lengths(lm, task, samples, 32)  # the real context: fits
    monkeypatch.setattr(lm.model.config.get_text_config(), "max_position_embeddings", 120)
    with pytest.raises(InputError, match=r"prompt tokens \+ 32 to generate exceed .* context of 120 tokens"):
        _check_prompt_lengths(lm, task, samples, 32)
