"""Results files the way users break them: options typed or left to their defaults, files a
killed run left behind, files that are not results files at all."""

import gzip
import json
from pathlib import Path

import pytest

from kvcodec.cli import main
from kvcodec.report import markdown, option_plot, option_series, summarize
from kvcodec.results import ResultsError, ResultsFile, options_key, read_records, record_key
from kvcodec.tasks import canonical_task_options, get_task


def _record(sample="s0", pipeline="full", options=None, task="needle", dtype="bfloat16", score=1.0):
    return {
        "model": "m", "model_sha256": "0" * 64, "dtype": dtype, "task": task,
        "task_options": {} if options is None else options, "sample_id": sample, "pipeline": pipeline,
        "prediction": "x", "score": score, "agree": pipeline == "full", "nll": 1.0, "delta_nll": None,
        "bytes": 100, "fp16_bytes": 400, "elements": 200, "bits_per_element": 4.0, "max_new_tokens": 32,
    }


# ----------------------------------------------------------------------------- canonical options
def test_canonical_options_fill_in_the_defaults_and_hide_runtime_hooks():
    needle = get_task("needle")
    assert needle.canonical_options({}) == {"depth": 0.5, "length": 1024, "max_needle_tokens": 256}
    assert needle.canonical_options({"length": 2048})["length"] == 2048
    assert "count_tokens" not in needle.canonical_options({"count_tokens": len})
    assert get_task("squad").canonical_options(None) == {"include_unanswerable": False}
    assert get_task("mmlu").canonical_options({}) == {"shots": 5}  # subjects=None: left out
    assert canonical_task_options("not-a-task", {"a": 1}) == {"a": 1}


@pytest.mark.parametrize("task, typed", [
    ("needle", {"length": 1024}), ("needle", {"depth": 0.5, "length": 1024}),
    ("squad", {"include_unanswerable": False}), ("triviaqa", {"shots": 5}),
])
def test_a_default_and_the_same_value_typed_out_are_one_measurement(task, typed):
    assert record_key(_record(task=task, options={})) == record_key(_record(task=task, options=typed))
    assert options_key(_record(task=task, options={})) == options_key(_record(task=task, options=typed))


def test_a_different_value_is_a_different_measurement():
    assert record_key(_record(options={"length": 512})) != record_key(_record(options={}))
    assert record_key(_record(task="squad", options={"include_unanswerable": True})) != record_key(_record(task="squad"))


def test_report_puts_default_and_typed_options_in_one_group(tmp_path):
    records = [_record("s0", "full", {"length": 1024}), _record("s0", "int8", {"length": 1024}, score=0.5),
               _record("s1", "full", {}), _record("s1", "int8", {}, score=1.0)]
    rows = summarize(records)
    assert [(r.pipeline, r.n) for r in rows] == [("full", 2), ("int8", 2)]
    assert rows[0].task_options == json.dumps({"length": 1024})  # spelled as the first record spells it
    assert "needle {'length': 1024}" in markdown(rows)
    option_plot(summarize([_record("s0", "full"), _record("s0", "int8")]), "length", tmp_path / "len.png")
    assert (tmp_path / "len.png").stat().st_size > 0  # the default length is a point on the x axis


def test_report_names_the_dtype_when_one_group_comes_in_two():
    records = [_record(dtype=d, pipeline=p) for d in ("bfloat16", "float32") for p in ("full", "int8")]
    table = markdown(summarize(records))
    assert "needle · bfloat16" in table and "needle · float32" in table
    assert "· bfloat16" not in markdown(summarize(records[:2]))  # one dtype: no suffix


def test_the_dtype_is_named_even_when_the_two_groups_spell_their_options_differently():
    records = [_record(dtype="bfloat16", pipeline=p, options={"length": 1024}) for p in ("full", "int8")]
    records += [_record(dtype="float32", pipeline=p, options={}) for p in ("full", "int8")]
    table = markdown(summarize(records))
    assert "needle {'length': 1024} · bfloat16" in table and "needle · float32" in table


def test_option_values_are_canonical_beyond_the_defaults():
    mmlu = get_task("mmlu")
    assert mmlu.canonical_options({"subjects": "astronomy, anatomy"}) == mmlu.canonical_options({"subjects": ["anatomy", "astronomy"]})
    assert record_key(_record(options={"depth": 1})) == record_key(_record(options={"depth": 1.0}))
    assert record_key(_record(options={"depth": True})) != record_key(_record(options={"depth": 1.0}))


def test_option_series_takes_no_bool_options_and_keeps_dtypes_apart():
    squad = [_record(pipeline=p, task="squad") for p in ("full", "int8")]
    with pytest.raises(ValueError, match="include_unanswerable"):
        option_series(summarize(squad), "include_unanswerable")
    needle = [_record(dtype=d, pipeline=p) for d in ("bfloat16", "float32") for p in ("full", "int8")]
    assert len(option_series(summarize(needle), "length")) == 2


# ----------------------------------------------------------------------------- broken files
def _gz(path, text):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)


def test_a_truncated_gzip_file_is_a_one_line_error_naming_the_recovery(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    _gz(path, "".join(json.dumps(_record(f"s{i}")) + "\n" for i in range(200)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(ResultsError, match=r"ends early.*gzip -dc") as exc:
        ResultsFile(path)
    assert "\n" not in str(exc.value)
    assert path.read_bytes() == data[: len(data) - 40]  # nothing changed


def _corrupt_gz(tmp_path):
    """A committed results file with a stretch of its deflate data flipped (not truncated):
    zlib rejects it (invalid stored block lengths)."""
    data = bytearray((Path(__file__).resolve().parents[1] / "reports" / "accuracy" / "needle.jsonl.gz").read_bytes())
    data[2000:2100] = bytes(x ^ 255 for x in data[2000:2100])
    return bytes(data)


@pytest.mark.parametrize("name, content, message", [
    ("r.jsonl.gz", b"not gzip at all\n", "bad gzip data"),
    ("r.jsonl", (json.dumps({**_record(), "task_options": "length=1"}) + "\n").encode(), "task_options must be"),
    ("r.jsonl", b"\xff\xfe\x00bad", "not UTF-8"),
    ("r.jsonl", (json.dumps(_record()) + "\n" + '{"model": "m", "sam').encode(), "last line is incomplete"),
    ("r.jsonl", b'{"model": 1}\n', "needs the fields"),
])
def test_unreadable_results_files_are_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ResultsError, match=message):
        ResultsFile(path)
    assert path.read_bytes() == content


def test_corrupt_gzip_data_is_a_one_line_error(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    path.write_bytes(_corrupt_gz(tmp_path))
    with pytest.raises(ResultsError, match="corrupt gzip data"):
        ResultsFile(path)


def test_a_folder_is_not_a_results_file(tmp_path):
    with pytest.raises(ResultsError, match="is a folder"):
        ResultsFile(tmp_path)
    with pytest.raises(ResultsError, match="is a folder"):
        list(read_records([tmp_path]))


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz"])
def test_appending_after_a_last_record_without_newline_starts_a_new_line(tmp_path, name):
    path = tmp_path / name
    text = json.dumps(_record("s0"))  # a complete record, no newline (e.g. written by hand)
    if name.endswith(".gz"):
        _gz(path, text)
    else:
        path.write_text(text, encoding="utf-8")
    results = ResultsFile(path)
    assert len(results.records) == 1
    results.append([_record("s1")])
    again = ResultsFile(path)
    assert [r["sample_id"] for r in again.records] == ["s0", "s1"]


# ----------------------------------------------------------------------------- CLI
def test_cli_errors_for_unreadable_results_and_bad_outputs(tmp_path, capsys):
    good = tmp_path / "r.jsonl"
    good.write_text(json.dumps(_record()) + "\n" + json.dumps(_record(pipeline="int8")) + "\n", encoding="utf-8")
    bad_gz = tmp_path / "bad.jsonl.gz"
    bad_gz.write_bytes(b"plain text")
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(_corrupt_gz(tmp_path))
    cases = [
        (["report", str(bad_gz)], "bad gzip data"),
        (["report", str(corrupt)], "corrupt gzip data"),
        (["report", str(good), "--markdown", str(tmp_path / "w.md"), "--by-option", "lenght", str(tmp_path / "b.png")],
         "no results have a numeric task option 'lenght'"),
        (["report", str(good), "--markdown", str(tmp_path / "no" / "x.md")], "no such folder"),
        (["report", str(good), "--plot", str(tmp_path / "p.txt")], "must end in a figure type"),
        (["report", str(good), "--frontier", str(tmp_path)], "is a directory"),
        (["eval", "--task", "squad", "--pipeline", "int8", "--data-dir", str(tmp_path), "--results", str(tmp_path)],
         "is a folder"),
        (["sweep", "--bits", "8-2", "--task", "squad", "--data-dir", str(tmp_path)], "runs backwards"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2, (argv, err)
        assert message in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "p.txt").exists() and not (tmp_path / "no").exists()
    assert not (tmp_path / "w.md").exists()  # a bad --by-option is found before the markdown is written
    main(["report", str(good), "--plot", str(tmp_path / "p.jpg")])  # any file type matplotlib writes
    assert (tmp_path / "p.jpg").read_bytes()[:2] == b"\xff\xd8"
