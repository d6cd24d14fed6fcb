"""Evaluation tasks: loaders on the real shared data, the same formats from another folder,
one-line errors, the registry and the data folder."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from kvcodec.tasks import (
    DATA_DIR_ENV,
    TASKS,
    DataError,
    Sample,
    TaskError,
    UnknownTaskError,
    get_task,
    resolve_data_dir,
)
from kvcodec.tasks.mmlu import LETTERS, format_question
from kvcodec.tasks.needle import whitespace_tokens
from kvcodec.tasks.squad import UNANSWERABLE_HINT

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NEEDLE = {"count_tokens": whitespace_tokens}


@pytest.fixture(scope="module")
def data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared evaluation data not found at {SHARED}")
    return SHARED


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def squad_paragraphs(path: Path) -> dict[str, tuple[str, str]]:
    """question id → (article title, paragraph), read independently of the loader."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {qa["id"]: (a["title"], p["context"]) for a in doc["data"] for p in a["paragraphs"] for qa in p["qas"]}


# ----------------------------------------------------------------------------- all tasks
OPTS = {"squad": {}, "hotpotqa": {}, "triviaqa": {}, "mmlu": {}, "needle": NEEDLE}


def test_registry():
    assert set(TASKS) == {"squad", "hotpotqa", "triviaqa", "mmlu", "needle"}
    for name, task in TASKS.items():
        assert get_task(name) is task and task.name == name
        assert task.kind in ("generate", "choice")
        assert task.primary_metric == task.metrics[0]
    assert get_task("mmlu").kind == "choice" and get_task("mmlu").answer_cue == "Answer:"
    with pytest.raises(UnknownTaskError) as err:
        get_task("squad2")
    assert isinstance(err.value, ValueError)
    msg = one_line(err)
    assert "'squad2'" in msg and all(name in msg for name in TASKS)


@pytest.mark.parametrize("name", sorted(OPTS))
def test_loader_is_deterministic_and_respects_n(data, name):
    task = get_task(name)
    a = task.load(data, n=6, seed=0, **OPTS[name])
    assert a == task.load(data, n=6, seed=0, **OPTS[name])
    assert len(a) == 6 and len({s.id for s in a}) == 6
    assert task.load(data, n=3, seed=0, **OPTS[name]) == a[:3]  # a smaller n is a prefix
    assert [s.id for s in task.load(data, n=6, seed=1, **OPTS[name])] != [s.id for s in a]
    assert task.load(data, n=0, seed=0, **OPTS[name]) == []
    for s in a:
        assert isinstance(s, Sample) and s.task == name
        assert s.id and s.context.strip() and s.answers
        assert all(isinstance(x, str) and x for x in s.answers)
        assert s.question.strip() if task.kind == "generate" else s.question == ""
        hash(s)  # frozen and hashable (meta is left out of the hash)
        scores = task.score(s.answers[0], s)
        assert list(scores) == list(task.metrics) and scores[task.primary_metric] == 1.0
        assert all(v == 0.0 for v in task.score("zzqx", s).values())


@pytest.mark.parametrize("name", sorted(OPTS))
def test_loader_rejects_bad_arguments(data, name):
    task = get_task(name)
    with pytest.raises(TaskError) as err:
        task.load(data, n=2, nonsense=1, **OPTS[name])
    assert "nonsense" in one_line(err)
    for n in (-1, 2.5, True):
        with pytest.raises(TaskError):
            task.load(data, n=n, **OPTS[name])
    with pytest.raises(TaskError):
        task.load(data, n=1, seed="0", **OPTS[name])


@pytest.mark.parametrize("name", sorted(OPTS))
def test_missing_file_is_a_one_line_error_naming_it(tmp_path, name):
    with pytest.raises(DataError) as err:
        get_task(name).load(tmp_path, n=1, **OPTS[name])
    msg = one_line(err)
    assert str(tmp_path) in msg
    expected = {
        "squad": "squad-v2-dev.json",
        "needle": "squad-v2-dev.json",
        "hotpotqa": "hotpotqa-dev-distractor.jsonl",
        "triviaqa": "triviaqa-closedbook.jsonl",
        "mmlu": "mmlu",
    }
    assert expected[name] in msg and "http" in msg


# ----------------------------------------------------------------------------- SQuAD
def test_squad_samples(data):
    task = get_task("squad")
    paragraphs = squad_paragraphs(data / "squad-v2-dev.json")
    samples = task.load(data, n=50, seed=0)
    for s in samples:
        assert s.meta["answerable"] and s.answers
        assert s.context == paragraphs[s.id][1] and s.meta["title"] == paragraphs[s.id][0]
        assert UNANSWERABLE_HINT not in s.question
    assert len(task.load(data)) == 4842 - 2480  # every answerable question


def test_squad_with_unanswerable(data):
    task = get_task("squad")
    samples = task.load(data, n=60, seed=0, include_unanswerable=True)
    empty = [s for s in samples if not s.answers]
    assert empty and len(empty) < len(samples)
    assert all(s.question.endswith(UNANSWERABLE_HINT) for s in samples)
    s = empty[0]
    assert not s.answerable and s.meta["answerable"] is False
    assert task.score("", s) == {"f1": 1.0, "em": 1.0}
    assert task.score("Unanswerable.", s) == {"f1": 1.0, "em": 1.0}
    assert task.score(" \n", s) == {"f1": 1.0, "em": 1.0}
    assert task.score("Normandy", s) == {"f1": 0.0, "em": 0.0}
    answerable = next(x for x in samples if x.answers)
    assert task.score("unanswerable", answerable) == {"f1": 0.0, "em": 0.0}
    assert len(task.load(data, include_unanswerable=True)) == 4842
    with pytest.raises(TaskError):
        task.load(data, n=1, include_unanswerable="yes")


def test_squad_scores_generated_replies(data):
    task = get_task("squad")
    s = task.load(data, n=1, seed=0)[0]
    gold = s.answers[0]
    assert task.score(f"Answer: {gold}.\nQuestion: something else", s)["em"] == 1.0
    assert task.score(f"{gold} and more words", s)["em"] == 0.0


# ----------------------------------------------------------------------------- HotpotQA
def test_hotpotqa_samples(data):
    task = get_task("hotpotqa")
    raw = {}
    with open(data / "hotpotqa-dev-distractor.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            raw[rec["question_id"]] = rec
    for s in task.load(data, n=20, seed=0):
        rec = raw[s.id]
        pieces = s.context.split("\n\n")
        assert len(pieces) == len(rec["contexts"]) == s.meta["paragraphs"]
        for piece, ctx in zip(pieces, rec["contexts"]):
            assert piece == f"{ctx['title']}: {ctx['paragraph_text']}"
        assert s.question == rec["question_text"].strip()
        assert list(s.answers) == [x for obj in rec["answers_objects"] for x in obj["spans"]]
    assert len(task.load(data)) == 400


# ----------------------------------------------------------------------------- TriviaQA
def test_triviaqa_shots_exclude_the_sample(data):
    task = get_task("triviaqa")
    samples = task.load(data, n=40, seed=0)
    for s in samples:
        shots = s.meta["shots"]
        assert len(shots) == 5 and len(set(shots)) == 5 and s.id not in shots
        assert s.context.count("Question: ") == 5 and s.context.count("\nAnswer: ") == 5
        assert f"Question: {s.question}\n" not in s.context
        assert not s.context.endswith("\n")
    assert task.load(data, n=40, seed=0) == samples  # shots are deterministic too
    two = task.load(data, n=3, seed=0, shots=2)
    assert [s.id for s in two] == [s.id for s in samples[:3]]
    assert all(s.context.count("Question: ") == 2 for s in two)
    with pytest.raises(TaskError):
        task.load(data, n=1, shots=0)


def test_triviaqa_reads_every_record_of_the_shared_file(data):
    # one record of the shared copy holds a raw line break inside its question string
    samples = {s.id: s for s in get_task("triviaqa").load(data)}
    assert len(samples) == 2499
    split = next(s for s in samples.values() if "Sutherland Brothers and" in s.question)
    assert split.answers[0] == "QUIVER"
    first = samples["triviaqa-0"]
    assert first.question == "Brunswick, Lancastrian and Pearl Pickler are types of which vegetable?"
    assert "Onion" in first.answers and "Allium cepa" in first.answers
    assert get_task("triviaqa").score("onions", first)["em"] == 1.0  # "Onions" is an alias


# ----------------------------------------------------------------------------- MMLU
def test_mmlu_context_has_five_shots_and_four_choices(data):
    task = get_task("mmlu")
    samples = task.load(data, n=30, seed=0)
    for s in samples:
        subject, row = s.id.split("/")
        assert s.meta["subject"] == subject
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        assert s.context.startswith(header)
        assert len(re.findall(r"\nAnswer: [ABCD]\n\n", s.context)) == 5
        assert len(s.choices) == 4 and s.label in range(4) and s.answers == (LETTERS[s.label],)
        rows = list(csv.reader(open(data / "mmlu" / "test" / f"{subject}_test.csv", encoding="utf-8", newline="")))
        q, *choices, answer = rows[1 + int(row)]
        assert tuple(choices) == s.choices and int(answer) == s.label
        assert s.context.endswith(format_question(q, choices))
        assert format_question(q, choices).endswith(f"\nD. {choices[3]}\n")
        assert task.score(LETTERS[s.label], s) == {"accuracy": 1.0}
        assert task.score(f" ({LETTERS[s.label].lower()}) ", s) == {"accuracy": 1.0}
        assert task.score(LETTERS[(s.label + 1) % 4], s) == {"accuracy": 0.0}
    # the prompt is the standard one, shot by shot, from the dev file
    s = samples[0]
    subject = s.meta["subject"]
    dev = list(csv.reader(open(data / "mmlu" / "dev" / f"{subject}_dev.csv", encoding="utf-8", newline="")))[1:]
    body = "".join(format_question(q, c) + f"Answer: {LETTERS[int(a)]}\n\n" for q, *c, a in dev[:5])
    assert s.context.startswith(
        f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n" + body
    )
    assert len({s.meta["subject"] for s in task.load(data, n=200, seed=0)}) > 20  # spread over subjects


def test_mmlu_subjects_and_shots(data):
    task = get_task("mmlu")
    some = task.load(data, n=10, seed=0, subjects="anatomy, sociology")
    assert {s.meta["subject"] for s in some} == {"anatomy", "sociology"}
    assert task.load(data, n=10, seed=0, subjects=["sociology", "anatomy"]) == some
    zero = task.load(data, n=2, seed=0, subjects=["anatomy"], shots=0)
    assert "\nAnswer: " not in zero[0].context
    with pytest.raises(TaskError) as err:
        task.load(data, n=1, subjects=["anatomy", "astrology"])
    assert "astrology" in one_line(err)
    with pytest.raises(DataError):
        task.load(data, n=1, shots=6)  # dev files have 5 rows
    assert len(task.load(data)) == 13217


# ----------------------------------------------------------------------------- needle
@pytest.mark.parametrize("length", [512, 1024])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 1.0])
def test_needle_length_and_depth(data, length, depth):
    task = get_task("needle")
    paragraphs = squad_paragraphs(data / "squad-v2-dev.json")
    samples = task.load(data, n=4, seed=0, length=length, depth=depth, **NEEDLE)
    for s in samples:
        qid = s.id.split("/")[0]
        title, needle = paragraphs[qid]
        n_needle = whitespace_tokens(needle)
        total = whitespace_tokens(s.context)
        assert length - 3 <= total <= length and s.meta["tokens"] == total
        assert s.context.count(needle) == 1
        before = whitespace_tokens(s.context[: s.context.index(needle)])
        assert before / (total - n_needle) == pytest.approx(depth, abs=0.01)
        assert s.meta["depth_actual"] == pytest.approx(depth, abs=0.01)
        if depth == 0.0:
            assert s.context.startswith(needle)
        if depth == 1.0:
            assert s.context.endswith(needle)
        # every other piece is (a prefix of) a paragraph of another article
        others = [p for t, p in set(paragraphs.values()) if t != title]
        for piece in s.context.split("\n\n"):
            if piece != needle:
                assert any(p.startswith(piece) for p in others)
        assert s.question and s.answers and task.score(s.answers[0], s)["f1"] == 1.0


def test_needle_same_needles_across_depths_and_lengths(data):
    task = get_task("needle")
    ids = [
        [s.id.split("/")[0] for s in task.load(data, n=5, seed=3, length=length, depth=depth, **NEEDLE)]
        for length in (512, 2048)
        for depth in (0.1, 0.9)
    ]
    assert all(x == ids[0] for x in ids)


def test_needle_with_non_additive_token_counters(data):
    def chars(text: str) -> int:  # ~4 characters a token: the sum of the pieces overestimates
        return (len(text) + 3) // 4

    def superadditive(text: str) -> int:  # the sum of the pieces underestimates
        words = len(text.split())
        return words + words // 40

    for count in (chars, superadditive):
        for depth in (0.0, 0.3, 1.0):
            for s in get_task("needle").load(data, n=3, seed=0, length=700, depth=depth, count_tokens=count):
                assert 690 <= count(s.context) <= 700 and s.meta["tokens"] == count(s.context)
                assert s.meta["depth_actual"] == pytest.approx(depth, abs=0.02)


def test_largest_gallops_to_the_boundary():
    from kvcodec.tasks.needle import _largest

    for top in (0, 1, 7, 100):
        for boundary in range(-1, top + 1):
            for start in {0, top, boundary, max(0, boundary - 3), min(top, boundary + 5)}:
                calls = []

                def ok(k: int) -> bool:
                    calls.append(k)
                    return k <= boundary

                assert _largest(ok, start, top) == boundary
                assert all(0 <= k <= top for k in calls)


def test_needle_options(data):
    task = get_task("needle")
    with pytest.raises(TaskError) as err:
        task.load(data, n=1)
    assert "count_tokens" in one_line(err)
    for bad in ({"depth": 1.5}, {"depth": -0.1}, {"length": 0}, {"length": "1024"}, {"max_needle_tokens": 0}):
        with pytest.raises(TaskError):
            task.load(data, n=1, **{**NEEDLE, **bad})
    with pytest.raises(TaskError):
        task.load(data, n=1, length=20, **NEEDLE)  # no paragraph fits in 10 tokens


# ----------------------------------------------------------------------------- other folders
def _squad_slice(data: Path, articles: int, paragraphs: int) -> dict:
    doc = json.loads((data / "squad-v2-dev.json").read_text(encoding="utf-8"))
    doc["data"] = [dict(a, paragraphs=a["paragraphs"][:paragraphs]) for a in doc["data"][:articles]]
    return doc


def test_squad_and_needle_from_another_folder(data, tmp_path):
    doc = _squad_slice(data, 3, 4)
    (tmp_path / "squad-v2-dev.json").write_text(json.dumps(doc), encoding="utf-8")
    got = get_task("squad").load(tmp_path, include_unanswerable=True)
    n_q = sum(len(p["qas"]) for a in doc["data"] for p in a["paragraphs"])
    assert len(got) == n_q
    shared = {x.id: x for x in get_task("squad").load(data, include_unanswerable=True)}
    assert all(x == shared[x.id] for x in got)  # the same samples as from the full file
    needle = get_task("needle").load(tmp_path, n=2, length=300, max_needle_tokens=140, **NEEDLE)
    assert needle and all(290 <= whitespace_tokens(s.context) <= 300 for s in needle)
    # the official file name works too
    official = tmp_path / "official"
    official.mkdir()
    shutil.copy(tmp_path / "squad-v2-dev.json", official / "dev-v2.0.json")
    assert get_task("squad").load(official, n=5, seed=2) == get_task("squad").load(tmp_path, n=5, seed=2)


def test_squad_v1_file_reads_as_all_answerable(data, tmp_path):
    doc = _squad_slice(data, 1, 2)
    for p in doc["data"][0]["paragraphs"]:
        v1 = [qa for qa in p["qas"] if qa["answers"]]
        p["qas"] = [{k: v for k, v in qa.items() if k not in ("is_impossible", "plausible_answers")} for qa in v1]
    (tmp_path / "squad-v2-dev.json").write_text(json.dumps(doc), encoding="utf-8")
    assert all(s.answers for s in get_task("squad").load(tmp_path))


def test_hotpotqa_from_another_folder_and_the_official_format(data, tmp_path):
    lines = (data / "hotpotqa-dev-distractor.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    (tmp_path / "hotpotqa-dev-distractor.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    mine = get_task("hotpotqa").load(tmp_path, seed=5)
    assert len(mine) == 4
    official = []
    for line in lines:
        rec = json.loads(line)
        official.append(
            {
                "_id": rec["question_id"],
                "question": rec["question_text"],
                "answer": rec["answers_objects"][0]["spans"][0],
                "context": [[c["title"], [c["paragraph_text"]]] for c in rec["contexts"]],
                "supporting_facts": [[c["title"], 0] for c in rec["contexts"] if c["is_supporting"]],
            }
        )
    folder = tmp_path / "official"
    folder.mkdir()
    (folder / "hotpot_dev_distractor_v1.json").write_text(json.dumps(official), encoding="utf-8")
    theirs = get_task("hotpotqa").load(folder, seed=5)
    assert [(s.id, s.context, s.question, s.answers, s.meta) for s in theirs] == [
        (s.id, s.context, s.question, s.answers, s.meta) for s in mine
    ]


def test_triviaqa_from_another_folder_and_the_official_format(data, tmp_path):
    lines = (data / "triviaqa-closedbook.jsonl").read_text(encoding="utf-8").split("\n")[:12]
    (tmp_path / "triviaqa-closedbook.jsonl").write_text("\n".join(lines), encoding="utf-8")  # no final newline
    mine = get_task("triviaqa").load(tmp_path, seed=1, shots=3)
    assert len(mine) == 12
    recs = [json.loads(line) for line in lines]
    folder = tmp_path / "official"
    folder.mkdir()
    doc = {
        "Data": [
            {
                "QuestionId": f"triviaqa-{i}",
                "Question": r["context"][len("Question: ") : -len("\nAnswer:")],
                "Answer": {"Value": r["answer"], "Aliases": r["aliases"]},
            }
            for i, r in enumerate(recs)
        ]
    }
    (folder / "unfiltered-web-dev.json").write_text(json.dumps(doc), encoding="utf-8")
    assert get_task("triviaqa").load(folder, seed=1, shots=3) == mine
    with pytest.raises(DataError):  # 12 questions cannot give 12 shots of others
        get_task("triviaqa").load(tmp_path, n=1, shots=12)


def test_mmlu_from_another_folder_and_the_official_format(data, tmp_path):
    subjects = ("anatomy", "sociology")
    for split in ("dev", "test"):
        (tmp_path / "mmlu" / split).mkdir(parents=True)
        (tmp_path / "official" / "data" / split).mkdir(parents=True)
        for subject in subjects:
            src = data / "mmlu" / split / f"{subject}_{split}.csv"
            rows = list(csv.reader(open(src, encoding="utf-8", newline="")))[: 5 if split == "dev" else 4]
            with open(tmp_path / "mmlu" / split / src.name, "w", encoding="utf-8", newline="") as f:
                csv.writer(f).writerows(rows)
            with open(tmp_path / "official" / "data" / split / src.name, "w", encoding="utf-8", newline="") as f:
                # official: no header, the answer as a letter
                csv.writer(f).writerows([*r[:5], LETTERS[int(r[5])]] for r in rows[1:])
    mine = get_task("mmlu").load(tmp_path, seed=0, shots=4)
    assert len(mine) == 6 and {s.meta["subject"] for s in mine} == set(subjects)
    assert get_task("mmlu").load(tmp_path / "official", seed=0, shots=4) == mine


# ----------------------------------------------------------------------------- corrupt files
def test_corrupt_files_give_one_line_errors(tmp_path):
    (tmp_path / "squad-v2-dev.json").write_text('{"data": [{"title": "x", "paragraphs": [', encoding="utf-8")
    with pytest.raises(DataError) as err:
        get_task("squad").load(tmp_path)
    assert "squad-v2-dev.json" in one_line(err) and "line 1" in str(err.value)

    (tmp_path / "squad-v2-dev.json").write_text('{"data": [{"title": "x", "paragraphs": [{"qas": []}]}]}')
    with pytest.raises(DataError) as err:
        get_task("squad").load(tmp_path)
    assert "data[0].paragraphs[0]" in one_line(err) and "'context'" in str(err.value)

    (tmp_path / "hotpotqa-dev-distractor.jsonl").write_text('{"question_id": "a"}\n{"oops"\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        get_task("hotpotqa").load(tmp_path)
    assert "hotpotqa-dev-distractor.jsonl" in one_line(err) and "line 2" in str(err.value)

    (tmp_path / "triviaqa-closedbook.jsonl").write_bytes(b'{"context": "Question: \xff?\\nAnswer:"}\n')
    with pytest.raises(DataError) as err:
        get_task("triviaqa").load(tmp_path)
    assert "triviaqa-closedbook.jsonl" in one_line(err) and "UTF-8" in str(err.value)

    (tmp_path / "triviaqa-closedbook.jsonl").write_text('{"context": "Question: x?\\nAnswer:"}\n[1, 2]\n')
    with pytest.raises(DataError) as err:
        get_task("triviaqa").load(tmp_path)
    assert "triviaqa-closedbook.jsonl" in one_line(err)

    for split in ("dev", "test"):
        (tmp_path / "mmlu" / split).mkdir(parents=True)
    header = "question,choice0,choice1,choice2,choice3,answer\n"
    (tmp_path / "mmlu" / "test" / "anatomy_test.csv").write_text(header + "Q,a,b,c,d,7\n")
    with pytest.raises(DataError) as err:
        get_task("mmlu").load(tmp_path)
    assert "anatomy_test.csv" in one_line(err) and "row 1" in str(err.value)
    (tmp_path / "mmlu" / "test" / "anatomy_test.csv").write_text("Q,a,b,c,d,B\n")
    with pytest.raises(DataError) as err:
        get_task("mmlu").load(tmp_path)  # the dev file is missing
    assert "anatomy_dev.csv" in one_line(err)


# ----------------------------------------------------------------------------- data folder
def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert resolve_data_dir(str(tmp_path)) == tmp_path
    with pytest.raises(DataError) as err:
        resolve_data_dir(None)
    msg = one_line(err)
    for needle in (
        DATA_DIR_ENV,
        "rajpurkar.github.io/SQuAD-explorer",
        "hotpotqa.github.io",
        "nlp.cs.washington.edu/triviaqa",
        "github.com/hendrycks/test",
        "squad-v2-dev.json",
        "hotpotqa-dev-distractor.jsonl",
        "triviaqa-closedbook.jsonl",
        "mmlu/test/*_test.csv",
    ):
        assert needle in msg
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir("") == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_data_dir(other) == other  # the argument wins
    with pytest.raises(DataError) as err:
        resolve_data_dir(tmp_path / "missing")
    assert "missing" in one_line(err)
