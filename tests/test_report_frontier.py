"""Reports: the code-entropy column and the rate–accuracy frontier (picks at 95 / 99 % of full,
Pareto set, markdown section, plot, ``kvcodec report --frontier``)."""

import json
import random
from pathlib import Path

import pytest

from kvcodec.cli import main
from kvcodec.report import frontier, frontier_markdown, frontier_plot, markdown, summarize
from kvcodec.results import read_records

SQUAD = Path(__file__).resolve().parents[1] / "reports" / "accuracy" / "squad.jsonl.gz"
PNG = b"\x89PNG\r\n\x1a\n"


def _record(sample, pipeline, score, nbytes, *, model="m", entropy=..., fp16_bytes=400, elements=200):
    r = {
        "model": model, "model_sha256": "0" * 64, "dtype": "bfloat16", "task": "squad",
        "task_options": {}, "sample_id": f"s{sample}", "pipeline": pipeline,
        "prediction": "x", "score": score, "agree": pipeline == "full", "nll": 1.0,
        "delta_nll": None, "bytes": nbytes, "fp16_bytes": fp16_bytes, "elements": elements,
        "bits_per_element": 8 * nbytes / elements,
    }
    if entropy is not ...:
        r["code_entropy_bits_per_element"] = entropy
    return r


def _records(pipelines: dict[str, tuple[float, int]], n=20, model="m"):
    """A ``full`` record (score 1.0, 400 bytes) per sample and, per pipeline, every sample at
    (fraction of the full score, bytes): the pipeline's % of full is 100 · fraction."""
    out = []
    for s in range(n):
        out.append(_record(s, "full", 1.0, 400, model=model))
        for name, (fraction, nbytes) in pipelines.items():
            out.append(_record(s, name, fraction, nbytes, model=model))
    return out


GRID = {
    "big": (1.0, 300),      # 100 %
    "mid": (0.995, 200),    # 99.5 %: the cheapest ≥ 99
    "costly": (0.97, 250),  # 97 %: dominated by mid (fewer bytes, better)
    "cheap": (0.96, 100),   # 96 %: the cheapest ≥ 95
    "bad": (0.5, 50),       # 50 %
}


def _one(records):
    (picks,) = frontier(summarize(records)).values()
    return picks


def test_cheaper_96_is_the_95_pick_and_dearer_99_5_the_99_pick():
    fp = _one(_records(GRID))
    assert (fp.model, fp.task, fp.task_options, fp.dtype, fp.n) == ("m", "squad", "{}", "bfloat16", 5)
    assert fp.at_95.pipeline == "cheap" and fp.at_99.pipeline == "mid"
    assert fp.at_95.percent == pytest.approx(96.0) and fp.at_95.low == pytest.approx(96.0)
    assert fp.at_95.high == pytest.approx(96.0)
    assert fp.at_95.bytes == 100 and fp.at_95.fp16_percent == pytest.approx(25.0)
    assert fp.at_99.bytes == 200 and fp.at_99.fp16_percent == pytest.approx(50.0)
    assert fp.at_95.bits_per_element == pytest.approx(4.0)
    assert [p.pipeline for p in fp.pareto] == ["bad", "cheap", "mid", "big"]
    assert fp.pick(95) is fp.at_95 and fp.pick(99) is fp.at_99
    text = frontier_markdown(summarize(_records(GRID)))
    assert "### m · squad · bfloat16: rate–accuracy frontier (5 pipelines)" in text
    assert "- smallest ≥ 95 % of full: `cheap` — 96.0 % [96.0, 96.0], 100 bytes (25.0 % of FP16)" in text
    assert "- smallest ≥ 99 % of full: `mid` — 99.5 % [99.5, 99.5], 200 bytes (50.0 % of FP16)" in text
    table = [line for line in text.splitlines() if line.startswith("| `")]
    assert [line.split("`")[1] for line in table] == ["bad", "cheap", "mid", "big"]
    assert "`costly`" not in text and "`full`" not in text


def test_the_95_pick_goes_by_the_point_estimate_not_the_ci():
    """Noisy per-sample scores: a pipeline whose point estimate is ≥ 95 is picked even though
    its CI reaches below 95; one just below 95 is not."""
    recs = []
    for s in range(60):
        recs.append(_record(s, "full", 1.0, 400))
        recs.append(_record(s, "noisy", [0.8, 1.1][s % 2], 100))  # 95 % on average
        recs.append(_record(s, "almost", 0.949, 50))
    fp = _one(recs)
    assert fp.at_95.pipeline == "noisy" and fp.at_95.percent == pytest.approx(95.0) and fp.at_95.low < 95
    assert fp.at_99 is None


def test_nothing_qualifies_gives_none_and_the_markdown_says_so():
    rows = summarize(_records({"int2": (0.5, 100), "int3": (0.9, 150)}))
    fp = _one(_records({"int2": (0.5, 100), "int3": (0.9, 150)}))
    assert fp.at_95 is None and fp.at_99 is None
    assert [p.pipeline for p in fp.pareto] == ["int2", "int3"]
    text = frontier_markdown(rows)
    assert "- smallest ≥ 95 % of full: none — no pipeline of the 2 reaches 95 % of full" in text
    assert "- smallest ≥ 99 % of full: none — no pipeline of the 2 reaches 99 % of full" in text


def test_only_95_qualifies():
    fp = _one(_records({"a": (0.97, 100), "b": (0.98, 300)}))
    assert fp.at_95.pipeline == "a" and fp.at_99 is None


def test_exactly_95_counts_and_the_full_baseline_is_never_a_pick():
    fp = _one(_records({"edge": (0.95, 100), "below": (0.9499, 90)}))
    assert fp.at_95.pipeline == "edge" and fp.at_99 is None
    assert all(p.pipeline != "full" for p in fp.pareto)
    fp = _one(_records({"lossless": (1.0, 400)}))
    assert fp.at_99.pipeline == "lossless" and fp.n == 1


def test_ties():
    # equal bytes: the higher % of full wins the pick and dominates the other
    fp = _one(_records({"x": (0.96, 100), "y": (0.97, 100)}))
    assert fp.at_95.pipeline == "y" and [p.pipeline for p in fp.pareto] == ["y"]
    # equal % of full: the cheaper one dominates
    fp = _one(_records({"x": (0.97, 100), "y": (0.97, 120)}))
    assert fp.at_95.pipeline == "x" and [p.pipeline for p in fp.pareto] == ["x"]
    # equal bytes and % of full: neither dominates, both on the frontier; the pick is by name
    fp = _one(_records({"y": (0.97, 100), "x": (0.97, 100), "z": (1.0, 200)}))
    assert fp.at_95.pipeline == "x" and fp.at_99.pipeline == "z"
    assert [p.pipeline for p in fp.pareto] == ["x", "y", "z"]


def test_pareto_matches_the_definition_on_random_grids():
    rng = random.Random(7)
    for _ in range(20):
        grid = {f"p{i}": (rng.choice([0.5, 0.9, 0.95, 0.97, 1.0]), rng.choice([50, 100, 150, 200])) for i in range(8)}
        fp = _one(_records(grid, n=3))
        pts = {name: (100 * f, b) for name, (f, b) in grid.items()}

        def dominated(name):
            pc, bc = pts[name]
            return any(b <= bc and p >= pc and (b < bc or p > pc) for p, b in pts.values())

        assert {p.pipeline for p in fp.pareto} == {n for n in pts if not dominated(n)}
        for level, pick in ((95, fp.at_95), (99, fp.at_99)):
            ok = [b for p, b in pts.values() if p >= level - 1e-9]
            assert (pick is None) == (not ok)
            if pick is not None:
                assert pick.bytes == min(ok) and pick.percent >= level - 1e-9
                assert pick in fp.pareto  # the cheapest to reach a level is never dominated


def test_groups_are_separate():
    recs = _records(GRID, model="a") + _records({"only": (0.99, 10)}, model="b")
    fronts = frontier(summarize(recs))
    assert list(fronts) == [("a", "squad", "{}", "bfloat16"), ("b", "squad", "{}", "bfloat16")]
    assert fronts[("a", "squad", "{}", "bfloat16")].at_95.pipeline == "cheap"
    assert fronts[("b", "squad", "{}", "bfloat16")].at_99.pipeline == "only"
    text = frontier_markdown(summarize(recs))
    assert text.count("rate–accuracy frontier") == 2


def test_entropy_column_present_when_some_row_has_one():
    recs = []
    for s in range(4):
        recs.append(_record(s, "full", 1.0, 400))
        recs.append(_record(s, "int4 ans", 1.0, 100, entropy=[2.0, 3.0, None, 2.5][s]))  # mean of 2, 3, 2.5
        recs.append(_record(s, "int4", 1.0, 110, entropy=None))
        recs.append(_record(s, "int8", 1.0, 210))  # field absent, as in older files
    rows = {r.pipeline: r for r in summarize(recs)}
    assert rows["int4 ans"].code_entropy == pytest.approx(2.5)
    assert rows["int4"].code_entropy is None and rows["int8"].code_entropy is None
    assert rows["full"].code_entropy is None
    text = markdown(list(rows.values()))
    head, rule, *body = text.splitlines()
    assert head.endswith("| bits/elem | H codes (bit/el) |") and rule.endswith("|---:|---:|")
    assert all(line.count("|") == head.count("|") for line in [rule, *body])
    ans = next(line for line in body if "`int4 ans`" in line)
    assert ans.endswith("| 4.00 | 2.50 |")
    assert next(line for line in body if "`int8`" in line).endswith("| 8.40 |  |")
    # the frontier's Pareto table shows it too
    assert "| H codes (bit/el) |" in frontier_markdown(list(rows.values()))


def test_entropy_column_absent_for_old_records():
    recs = _records(GRID)
    rows = summarize(recs)
    assert all(r.code_entropy is None for r in rows)
    text = markdown(rows)
    assert "H codes" not in text and text.splitlines()[0].endswith("| bits/elem |")
    assert "H codes" not in frontier_markdown(rows)
    # all-null entropies are the same as absent ones
    for r in recs:
        r["code_entropy_bits_per_element"] = None
    assert markdown(summarize(recs)) == text


def test_frontier_plot_writes_a_png(tmp_path):
    rows = summarize(_records(GRID, model="a") + _records({"x": (0.5, 100)}, model="b"))
    frontier_plot(rows, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="full baseline"):
        frontier_plot(summarize([_record(0, "full", 1.0, 400)]), tmp_path / "no.png")


def test_cli_report_frontier(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records(GRID)))
    md, png = tmp_path / "r.md", tmp_path / "f.png"
    main(["report", str(path), "--markdown", str(md), "--frontier", str(png)])
    out = capsys.readouterr().out
    assert png.read_bytes()[:8] == PNG
    text = md.read_text(encoding="utf-8")
    pick = "- smallest ≥ 95 % of full: `cheap` — 96.0 % [96.0, 96.0], 100 bytes (25.0 % of FP16)"
    for where in (text, out):
        assert "\n## Rate–accuracy frontier\n\n### m · squad" in where and pick in where
    assert text.startswith(markdown(summarize(_records(GRID))))
    # without --markdown the section still goes to stdout
    main(["report", str(path), "--frontier", str(tmp_path / "g.png")])
    assert pick in capsys.readouterr().out and (tmp_path / "g.png").read_bytes()[:8] == PNG
    # without --frontier, nothing changes
    main(["report", str(path), "--markdown", str(md)])
    assert "frontier" not in md.read_text(encoding="utf-8") and "frontier" not in capsys.readouterr().out
    # only the baseline: nothing to put on a frontier
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps(_record(0, "full", 1.0, 400)) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["report", str(plain), "--frontier", str(tmp_path / "no.png")])
    assert exc.value.code == 2 and "--frontier" in capsys.readouterr().err
    assert not (tmp_path / "no.png").exists()


def test_committed_squad_results_have_sane_picks(tmp_path):
    """Read-only: the committed SQuAD records (two models, n = 200)."""
    before = SQUAD.read_bytes()
    rows = summarize(read_records([SQUAD]))
    fronts = frontier(rows)
    assert {k[0] for k in fronts} == {"smollm2-135m", "gemma3-270m"}
    for key, fp in fronts.items():
        mine = [r for r in rows if (r.model, r.task, r.task_options, r.dtype) == key and r.pipeline != "full"]
        assert fp.n == len(mine) == 18
        assert fp.at_95 is not None and fp.at_95.percent >= 95 and fp.at_95.low <= fp.at_95.percent <= fp.at_95.high
        assert fp.at_99 is not None and fp.at_99.percent >= 99 and fp.at_95.bytes <= fp.at_99.bytes
        for level, pick in ((95, fp.at_95), (99, fp.at_99)):
            assert pick.bytes == min(r.bytes for r in mine if r.percent >= level)
            assert pick in fp.pareto and pick.fp16_percent < 100
        xs = [p.bytes for p in fp.pareto]
        ys = [p.percent for p in fp.pareto]
        assert xs == sorted(xs) and ys == sorted(ys) and "full" not in {p.pipeline for p in fp.pareto}
        # the pick with the fewest bytes in these records: 4-bit keys per channel, 4-bit values per token
        assert fp.at_95.pipeline == fp.at_99.pipeline == "k=int4:axis=channel v=int4"
    text = frontier_markdown(rows)
    assert text.count("- smallest ≥ 95 % of full: `k=int4:axis=channel v=int4`") == 2
    frontier_plot(rows, tmp_path / "squad.png")
    assert (tmp_path / "squad.png").read_bytes()[:8] == PNG
    assert SQUAD.read_bytes() == before
