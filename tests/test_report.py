"""Reports: summaries, layer-wise damage maps, option plots, and the committed report."""

import json
import random
from pathlib import Path

import pytest

from kvcodec.cli import main
from kvcodec.report import damage_markdown, damage_plot, layer_damage, markdown, option_plot, summarize
from kvcodec.results import read_records

REPORT = Path(__file__).resolve().parents[1] / "reports" / "accuracy"


def _record(sample, pipeline, score, nll, options=None, model="m"):
    return {
        "model": model, "model_sha256": "0" * 64, "dtype": "bfloat16", "task": "squad",
        "task_options": options or {}, "sample_id": f"s{sample}", "pipeline": pipeline,
        "prediction": "x", "score": score, "agree": pipeline == "full", "nll": nll,
        "delta_nll": None, "bytes": 100, "fp16_bytes": 400, "elements": 200, "bits_per_element": 4.0,
    }


def _layerwise_records(layers=6, hurt=3, n=30):
    rng = random.Random(0)
    out = []
    for s in range(n):
        base_score = rng.random()
        out.append(_record(s, "full", base_score, 1.0))
        for i in range(layers):
            damage = 0.8 if i == hurt else 0.01 * rng.random()
            r = _record(s, f"identity L{i}=int4", base_score * (0.3 if i == hurt else 1.0), 1.0 + damage)
            r["delta_nll"] = damage
            out.append(r)
    return out


def test_damage_map_finds_the_sensitive_layer(tmp_path):
    rows = summarize(_layerwise_records())
    cells = layer_damage(rows)
    assert [c.layer for c in cells] == list(range(6)) and {c.stage for c in cells} == {"int4"}
    text = damage_markdown(cells)
    assert "Top 3 layers by ΔNLL: 3," in text
    hurt = next(c for c in cells if c.layer == 3).summary
    assert hurt.percent == pytest.approx(30.0) and hurt.delta_nll == pytest.approx(0.8)
    damage_plot(cells, tmp_path / "map.png")
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_non_layerwise_pipelines_are_not_cells():
    recs = [_record(0, "full", 1.0, 1.0), _record(0, "int4 L0=identity", 1.0, 1.0), _record(0, "identity L1=int4", 0.5, 1.2)]
    assert [c.layer for c in layer_damage(summarize(recs))] == [1]


def test_option_plot_needs_a_numeric_option(tmp_path):
    recs = []
    for length in (512, 1024):
        for s in range(5):
            recs += [_record(s, "full", 1.0, 1.0, {"length": length}), _record(s, "int4", 0.5, 1.5, {"length": length})]
    option_plot(summarize(recs), "length", tmp_path / "len.png")
    assert (tmp_path / "len.png").stat().st_size > 0
    with pytest.raises(ValueError, match="depth"):
        option_plot(summarize(recs), "depth", tmp_path / "x.png")


def test_cli_report_damage_map_and_errors(tmp_path, capsys):
    path = tmp_path / "lw.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _layerwise_records()))
    main(["report", str(path), "--markdown", str(tmp_path / "lw.md"), "--damage-map", str(tmp_path / "lw.png")])
    assert "Layer-wise damage map" in (tmp_path / "lw.md").read_text()
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps(_record(0, "full", 1.0, 1.0)) + "\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["report", str(plain), "--damage-map", str(tmp_path / "no.png")])
    assert exc.value.code == 2
    assert "no one-layer-at-a-time pipelines" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["report", str(plain), "--by-option", "length", str(tmp_path / "no.png")])
    assert exc.value.code == 2


@pytest.mark.parametrize("name", ["squad", "layerwise", "needle"])
def test_committed_report_tables_rerender_from_committed_records(name):
    """The committed markdown is exactly what `run.sh report` renders from the records."""
    rows = summarize(read_records([REPORT / f"{name}.jsonl.gz"]))
    text = markdown(rows)
    cells = layer_damage(rows)
    if cells:
        text += "\n## Layer-wise damage map\n\n" + damage_markdown(cells)
    assert text == (REPORT / f"{name}.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("bad", ["2/2", "x/2", "1", "-1/2", "1/0"])
def test_bad_shard_is_a_usage_error(bad, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--task", "squad", "--pipeline", "int8", "--shard", bad, "--data-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "--shard takes I/K" in capsys.readouterr().err


@pytest.mark.parametrize("inputs, name", [
    (["codecs/squad.jsonl.gz"], "squad.md"),
    (["accuracy/squad.jsonl.gz", "codecs/squad.jsonl.gz"], "all-squad.md"),
])
def test_committed_codecs_report_rerenders_from_committed_records(inputs, name, tmp_path):
    """reports/codecs' markdown (tables and frontier section) is what `run.sh report` renders."""
    reports = REPORT.parent
    out = tmp_path / name
    main(["report", *(str(reports / i) for i in inputs), "--markdown", str(out), "--frontier", str(tmp_path / "f.png")])
    assert out.read_text(encoding="utf-8") == (reports / "codecs" / name).read_text(encoding="utf-8")
