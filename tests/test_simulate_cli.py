"""`kvcodec simulate`'s channel, streaming, adaptation, profile and sweep options
(specs/streaming.md §6): a tiny random-weight model with a real tokenizer stands in for
SmolLM2 so the whole command runs in seconds; the real model runs under ``-m model``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kvcodec import cli
from kvcodec.plugins import reset_registry
from kvcodec_sim.receiver import PROFILE_FORMAT

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    """A 3-layer random Llama with a word-level tokenizer over the default prompt's words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from kvcodec.models import LoadedModel

    text = (ROOT / "kvcodec/data/default_context.txt").read_text() + (ROOT / "kvcodec/data/default_question.txt").read_text()
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for w, _ in pre.pre_tokenize_str(text + " Question: Answer:")})
    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, eos_token_id=1)
    model = LlamaForCausalLM(cfg).eval()
    return LoadedModel(model, tokenizer, "tiny", Path("tiny.gguf"), "0" * 64, torch.device("cpu"), torch.float32, False)


@pytest.fixture
def run(tiny, monkeypatch, capsys):
    """``run(*argv) -> (exit code, stdout, stderr)`` with the tiny model in place of any --model."""
    monkeypatch.setattr(cli, "_load", lambda *a, **k: tiny)

    def invoke(*argv):
        reset_registry()
        code = 0
        try:
            cli.main(list(argv))
        except SystemExit as exc:
            code = exc.code or 0
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def tiny_profile(path: Path, model: str = "tiny", layers: int = 3, levels=("int8", "fp16", "int4:axis=channel")) -> Path:
    tokens = [16, 64, 256]
    data = {
        "format": PROFILE_FORMAT, "version": 1, "model": model, "device": "cuda", "device_name": "pretend GPU",
        "dtype": "bfloat16", "layers": layers, "question_tokens": 12, "tokens": tokens,
        "text_prefill_s": [0.01 * t / 16 for t in tokens], "question_prefill_s": [0.004] * 3,
        "layer_s": [[0.003 / layers] * layers] * 3, "head_s": [0.001] * 3,
        "codecs": {lv: {"encode_s": [0.001] * 3, "decode_s": [0.002] * 3, "elements": [1000, 4000, 16000]}
                   for lv in levels},
    }
    path.write_text(json.dumps(data))
    return path


def test_stream_adaptive_timeline_and_plot(run, tmp_path):
    timeline, plot = tmp_path / "t.json", tmp_path / "t.png"
    code, out, err = run("simulate", "--tokens", "64", "--link", "100Mbps,loss=1%", "--latency", "2ms",
                         "--stream", "--layers-per-chunk", "1", "--target-ttft", "1s",
                         "--levels", "int8,int4:axis=channel", "--pipeline", "int8", "--pipeline", "fp16",
                         "--max-new-tokens", "2", "--timeline", str(timeline), "--timeline-plot", str(plot))
    assert code == 0, err
    header = " ".join(out.split("┡")[0].split())
    for column in ("goodput", "retx", "stream", "≤ 1000"):
        assert column in header, header
    assert "Adaptive stream" in out and "Hindsight optimum" in out
    data = json.loads(timeline.read_text())
    labels = [t["label"] for t in data["timelines"]]
    assert labels[:2] == ["int8 (stream)", "fp16 (stream)"] and labels[-1] == "text + recompute"
    assert any(l.startswith("adaptive") for l in labels)
    stream = data["timelines"][0]
    assert len(stream["chunks"]) == 3 and stream["mode"] == "stream"
    kinds = {e["event"] for e in stream["events"]}
    assert kinds == {"encoded", "sent", "arrived", "decode_start", "decode_end", "prefill_start", "prefill_end",
                     "first_token"}
    assert stream["ttft_s"] == max(e["t_s"] for e in stream["events"])
    assert data["adaptive"]["target_s"] == 1.0 and data["adaptive"]["hindsight"] is not None
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_report_keeps_the_old_fields(run):
    code, out, err = run("simulate", "--tokens", "48", "--link", "100Mbps", "--latency", "5ms", "--pipeline", "fp16",
                         "--pipeline", "int4:axis=channel", "--max-new-tokens", "2", "--json")
    assert code == 0, err
    report = json.loads(out)
    rows = {r["pipeline"]: r for r in report["rows"]}
    assert set(rows) == {"fp16", "int4:axis=channel", "text + recompute"}
    for name in ("fp16", "int4:axis=channel"):
        row = rows[name]
        wire = row["bytes"] + 40 * -(-row["bytes"] // 1460)
        assert row["transfer_s"] == pytest.approx(wire * 8 / 100e6 + 0.005, rel=1e-9)
        assert row["ttft_s"] == pytest.approx(row["encode_s"] + row["transfer_s"] + row["decode_s"] + row["receiver_s"])
        assert row["stream_ttft_s"] is None and row["retransmissions"] == 0
    assert report["receiver"]["model"].startswith("this machine")
    assert report["link"]["bandwidth_bps"] == 100e6 and "adaptive" not in report


def test_a_diagnose_recipe_file_is_a_simulate_pipeline(run, tmp_path):
    """The recipe file `kvcodec diagnose` writes (comments, then one spec) is read unchanged by
    `simulate --pipeline-file` (issue 6: the recipe round-trips through eval and simulate)."""
    from kvcodec.diagnose import Cell, diagnose, write_recipe
    from kvcodec.report import Summary

    def cell(layer, target, damage):
        return Cell(layer, target, Summary("tiny", "squad", "{}", "float32", f"identity L{layer}.{target}=int4", 4,
                                           0.5, 0.5, 100.0, 90.0, 110.0, 1.0, damage, 1000.0, 0.3, 4.5))

    cells = [cell(i, t, 0.9 if (i, t) == (1, "k") else 0.0) for i in range(3) for t in "kv"]
    recipe = tmp_path / "recipe.txt"
    write_recipe(recipe, diagnose(cells, "int4"), ["kvcodec diagnose --model tiny"])
    assert recipe.read_text().startswith("# kvcodec diagnose")
    code, out, err = run("simulate", "--tokens", "48", "--link", "100Mbps", "--latency", "5ms", "--pipeline-file",
                         str(recipe), "--max-new-tokens", "2", "--json")
    assert code == 0, err
    rows = {r["pipeline"]: r for r in json.loads(out)["rows"]}
    assert set(rows) == {"int4 L1.k=int8", "text + recompute"}
    plain = run("simulate", "--tokens", "48", "--link", "100Mbps", "--latency", "5ms", "--pipeline", "int4",
                "--max-new-tokens", "2", "--json")
    assert plain[0] == 0, plain[2]
    (int4,) = [r for r in json.loads(plain[1])["rows"] if r["pipeline"] == "int4"]
    assert rows["int4 L1.k=int8"]["bytes"] > int4["bytes"]  # layer 1's keys really travel in INT8


def test_profile_drives_the_receiver(run, tmp_path):
    profile = tiny_profile(tmp_path / "p.json")
    code, out, err = run("simulate", "--tokens", "64", "--profile", str(profile), "--pipeline", "int8", "--stream",
                         "--layers-per-chunk", "2", "--max-new-tokens", "2", "--encode-ahead", "--json")
    assert code == 0, err
    report = json.loads(out)
    int8, text = report["rows"]
    n = report["context_tokens"]
    assert int8["receiver_s"] == pytest.approx(0.004)
    assert int8["decode_s"] == pytest.approx(0.002) and int8["encode_s"] == pytest.approx(0.001)
    assert int8["ttft_s"] == pytest.approx(int8["transfer_s"] + 0.002 + 0.004)  # encoded ahead: no encode
    expected_text = 0.01 * (1 + (n - 16) / 48 * 3) if n <= 64 else 0.04 + 0.12 * (n - 64) / 192
    assert text["receiver_s"] == pytest.approx(expected_text)
    assert report["receiver"]["model"] == f"profile {profile}"


def test_profile_gives_the_context_prefill_too(run, tmp_path):
    """With --profile every receiver figure comes from the profile: the report's context
    prefill is the profile's (deterministic), not this machine's."""
    from kvcodec_sim.receiver import ReceiverProfile

    path = tiny_profile(tmp_path / "p.json")
    data = json.loads(path.read_text())
    data["context_prefill_s"] = [0.5, 1.0, 3.0]
    path.write_text(json.dumps(data))
    argv = ("simulate", "--tokens", "64", "--profile", str(path), "--pipeline", "int8", "--max-new-tokens", "2", "--json")
    code, out, err = run(*argv)
    assert code == 0, err
    report = json.loads(out)
    expected = ReceiverProfile.load(path).context_time_s(report["context_tokens"])
    assert 0.5 <= expected <= 3.0
    assert report["receiver"]["prefill_context_s"] == pytest.approx(expected)
    assert json.loads(run(*argv)[1]) == report  # nothing measured here leaks into the report
    del data["context_prefill_s"]
    assert ReceiverProfile.from_json(data).context_time_s(64) is None


def test_bandwidth_sweep(run, tmp_path):
    profile = tiny_profile(tmp_path / "p.json")
    code, out, err = run("simulate", "--tokens", "64", "--profile", str(profile), "--pipeline", "int8", "--pipeline",
                         "fp16", "--stream", "--target-ttft", "20ms", "--levels", "fp16,int8,int4:axis=channel",
                         "--sweep-bandwidth", "10Mbps..10Gbps", "--sweep-points", "4", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["sweep"] == "bandwidth" and [round(p["x"]) for p in data["points"]] == [10_000_000, 100_000_000,
                                                                                       1_000_000_000, 10_000_000_000]
    for name in ("int8", "fp16"):
        ttft = [next(r for r in p["rows"] if r["pipeline"] == name)["stream_ttft_s"] for p in data["points"]]
        assert ttft == sorted(ttft, reverse=True)
    assert all(p["adaptive"]["hindsight"]["method"] == "exhaustive" for p in data["points"])
    code, out, err = run("simulate", "--tokens", "64", "--profile", str(profile), "--pipeline", "int8",
                         "--sweep-bandwidth", "10Mbps..1Gbps", "--sweep-points", "3")
    assert code == 0, err
    assert "TTFT ms over bandwidth" in out and "10 Mbit/s" in out and "1 Gbit/s" in out


def test_loss_sweep(run, tmp_path):
    profile = tiny_profile(tmp_path / "p.json")
    code, out, err = run("simulate", "--tokens", "200", "--profile", str(profile), "--pipeline", "fp16",
                         "--link", "20Mbps", "--latency", "1ms", "--sweep-loss", "0..20%", "--sweep-points", "3",
                         "--seed", "4", "--json")
    assert code == 0, err
    points = json.loads(out)["points"]
    assert [p["x"] for p in points] == pytest.approx([0, 0.1, 0.2])
    fp16 = [p["rows"][0] for p in points]
    assert fp16[0]["retransmissions"] == 0 and fp16[2]["retransmissions"] > fp16[1]["retransmissions"] > 0
    assert fp16[0]["goodput_bps"] > fp16[2]["goodput_bps"]
    code, out, err = run("simulate", "--tokens", "200", "--profile", str(profile), "--pipeline", "fp16",
                         "--sweep-loss", "0..10%", "--sweep-points", "2")
    assert code == 0, err
    assert "goodput Mbit/s / retransmissions" in out


@pytest.mark.parametrize("argv,message", [
    (["--link", "100Mbps,loss=2"], "invalid link option loss"),
    (["--link", "fast"], "invalid bandwidth"),
    (["--link", "100Mbps,trace=/no/such/file"], "trace"),
    (["--arq", "window=0"], "--arq"),
    (["--arq", "nope=1"], "--arq"),
    (["--target-ttft", "1"], "--target-ttft"),
    (["--target-ttft", "0s"], "longer than 0"),
    (["--levels", "int8,int4"], "--levels needs --target-ttft"),
    (["--levels", "int8,,int4", "--target-ttft", "1s"], "empty level"),
    (["--levels", "int8,int8", "--target-ttft", "1s"], "twice"),
    (["--levels", "int8,nosuch", "--target-ttft", "1s"], "bad pipeline spec"),
    (["--initial-estimate", "fast"], "--initial-estimate"),
    (["--sweep-bandwidth", "10Mbps"], "LOW..HIGH"),
    (["--sweep-bandwidth", "1Gbps..10Mbps"], "LOW is above HIGH"),
    (["--sweep-loss", "0..100%"], "below 100%"),
    (["--sweep-loss", "0..1%", "--sweep-bandwidth", "1Mbps..2Mbps"], "one sweep"),
    (["--sweep-points", "3"], "--sweep-points needs"),
    (["--sweep-loss", "0..1%", "--timeline", "t.json"], "leave them out of a sweep"),
    (["--timeline", "/no/such/dir/t.json"], "does not exist"),
    (["--profile", "/no/such/profile.json"], "cannot read profile"),
    (["--pipeline", "int4:nope=1"], "bad pipeline spec"),
])
def test_bad_options_exit_2_before_loading_a_model(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["simulate", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_profile_problems_exit_2(run, tmp_path, monkeypatch):
    missing = tiny_profile(tmp_path / "a.json", levels=("int8",))
    code, _, err = run("simulate", "--profile", str(missing), "--pipeline", "fp16")
    assert code == 2 and "no codec timing for 'fp16'" in err
    other = tiny_profile(tmp_path / "b.json", model="gemma3-270m", layers=18)
    code, _, err = run("simulate", "--profile", str(other), "--pipeline", "int8", "--tokens", "32")
    assert code == 2 and "measured with gemma3-270m" in err
    (tmp_path / "c.json").write_text('{"format": "kvcodec-receiver-profile", "version": 7}')
    code, _, err = run("simulate", "--profile", str(tmp_path / "c.json"))
    assert code == 2 and "unsupported profile version" in err


def test_levels_split_on_commas_inside_specs():
    names = [p.describe() for p in cli._split_levels("int8,int4:axis=channel,group=32,int3:axis=channel")]
    assert names == ["int8", "int4:axis=channel,group=32", "int3:axis=channel"]
    names = [p.describe() for p in cli._split_levels("k=int4:axis=channel v=int4; int2")]
    assert names == ["k=int4:axis=channel v=int4", "int2"]


def test_aborted_transfer_is_one_line(run, tmp_path):
    code, _, err = run("simulate", "--tokens", "32", "--pipeline", "int8", "--link", "100Mbps,loss=0.95",
                       "--arq", "max-transmissions=2", "--max-new-tokens", "1")
    assert code == 2 and "lost too much" in err and len(err.strip().splitlines()) == 1


@pytest.mark.model
def test_the_example_command_on_smollm2(tmp_path):
    timeline, plot = tmp_path / "t.json", tmp_path / "t.png"
    cli.main(["simulate", "--tokens", "128", "--link", "100Mbps,loss=1%", "--stream", "--layers-per-chunk", "5",
              "--target-ttft", "1s", "--levels", "int8,int4:axis=channel,int3:axis=channel", "--pipeline", "int8",
              "--max-new-tokens", "4", "--timeline", str(timeline), "--timeline-plot", str(plot)])
    data = json.loads(timeline.read_text())
    assert len(data["timelines"][0]["chunks"]) == 6
    assert plot.stat().st_size > 10_000


@pytest.mark.model
def test_sweep_with_the_committed_profile(capsys):
    cli.main(["simulate", "--tokens", "128", "--profile", str(ROOT / "profiles/cpu-smollm2.json"),
              "--pipeline", "int8", "--sweep-bandwidth", "10Mbps..10Gbps", "--sweep-points", "3", "--json"])
    points = json.loads(capsys.readouterr().out)["points"]
    ttft = [p["rows"][0]["ttft_s"] for p in points]
    assert len(points) == 3 and ttft == sorted(ttft, reverse=True)


def test_progressive_stream_rows_fixed_prefixes_and_policies(run):
    """--progressive: one row per decodable prefix and one per policy; an adaptive receiver
    that accepts at once costs what its first prefix costs, one that keeps asking pays a
    one-way latency per request on top of the transfers."""
    code, out, err = run("simulate", "--model", "tiny", "--link", "100Mbps", "--latency", "20ms", "--pipeline", "int8",
                         "--progressive", "prog4", "--policy", "p1>=0,start=2", "--policy", "p1>=1,start=1", "--json")
    assert code == 0, err
    rows = {r["pipeline"]: r for r in json.loads(out)["rows"]}
    fixed = [rows[f"prog4@{b}"] for b in (1, 2, 3, 4)]
    assert [r["bytes"] for r in fixed] == sorted(r["bytes"] for r in fixed) and fixed[0]["bytes"] < fixed[-1]["bytes"]
    assert fixed[0]["rel_error"] > fixed[-1]["rel_error"]
    eager, never = rows["prog4 adaptive:p1>=0,start=2"], rows["prog4 adaptive:p1>=1,start=1"]
    # threshold 0 accepts the first check at 2 planes: exactly the fixed 2-plane prefix
    assert eager["bytes"] == fixed[1]["bytes"] and eager["ttft_s"] == pytest.approx(fixed[1]["ttft_s"])
    # threshold 1 is never met: every plane is asked for, one check per message, 3 requests
    assert never["bytes"] == fixed[-1]["bytes"]
    assert never["ttft_s"] > fixed[-1]["ttft_s"] + 3 * 0.020
    assert never["receiver_s"] == pytest.approx(sum(r["receiver_s"] for r in fixed), rel=1e-9)


def test_progressive_options_are_checked_before_the_model_loads(run):
    code, _, err = run("simulate", "--model", "tiny", "--progressive", "int8")
    assert code == 2 and "prog" in err and len(err.strip().splitlines()) == 1
    code, _, err = run("simulate", "--model", "tiny", "--policy", "p1>=0.5")
    assert code == 2 and "--progressive" in err
    code, _, err = run("simulate", "--model", "tiny", "--progressive", "prog8", "--policy", "p1>=2")
    assert code == 2 and "--policy" in err
