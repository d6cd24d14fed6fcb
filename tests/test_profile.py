"""Receiver profiles (kvcodec.profile measuring, kvcodec_sim.receiver reading,
specs/streaming.md §3): JSON round trip, interpolation, malformed files, the measuring
functions on a tiny random-weight model, the committed CPU profiles, and the real SmolLM2
(marked ``model``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kvcodec_sim.receiver import PROFILE_FORMAT, ProfileError, ReceiverProfile, interpolate

ROOT = Path(__file__).resolve().parent.parent


def tiny_lm(layers: int = 2, vocab: int = 96):
    """A random-weight Llama with ``layers`` layers, as a LoadedModel (no tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from kvcodec.models import LoadedModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg).eval()
    return LoadedModel(model, None, "tiny", Path("tiny.gguf"), "0" * 64, torch.device("cpu"), torch.float32, False)


def sample_json(**changes) -> dict:
    data = {
        "format": PROFILE_FORMAT, "version": 1, "model": "m", "device": "cpu", "dtype": "float32", "layers": 2,
        "question_tokens": 10, "tokens": [100, 200, 400],
        "text_prefill_s": [1.0, 2.0, 4.5], "question_prefill_s": [0.3, 0.4, 0.6],
        "layer_s": [[0.1, 0.1], [0.15, 0.15], [0.2, 0.3]], "head_s": [0.1, 0.1, 0.1],
        "codecs": {"int8": {"encode_s": [0.01, 0.02, 0.04], "decode_s": [0.02, 0.04, 0.08], "elements": [10, 20, 40]}},
        "device_name": "test cpu", "torch": "x",
    }
    data.update(changes)
    return data


def test_interpolation_rules():
    xs, ys = (100, 200, 400), (1.0, 2.0, 4.5)
    assert interpolate(xs, ys, 50) == 1.0  # below the grid: the first value
    assert interpolate(xs, ys, 100) == 1.0
    assert interpolate(xs, ys, 150) == pytest.approx(1.5)
    assert interpolate(xs, ys, 300) == pytest.approx(3.25)
    assert interpolate(xs, ys, 400) == pytest.approx(4.5)
    assert interpolate(xs, ys, 600) == pytest.approx(7.0)  # the last segment extended
    assert interpolate((5,), (2.0,), 1000) == 2.0
    assert interpolate((1, 2), (1.0, 0.0), 10) == 0.0  # never negative


def test_round_trip_and_queries(tmp_path):
    p = ReceiverProfile.from_json(sample_json())
    again = ReceiverProfile.from_json(json.loads(json.dumps(p.to_json())))
    assert again == p and again.codecs == p.codecs and again.meta == p.meta
    path = tmp_path / "p.json"
    path.write_text(json.dumps(p.to_json()))
    assert ReceiverProfile.load(path) == p
    assert p.text_time_s(300) == pytest.approx(3.25)
    assert p.layer_times_s(150) == pytest.approx((0.125, 0.125))
    assert p.head_time_s(150) == pytest.approx(0.1)
    assert p.question_time_s(400) == pytest.approx(0.6)
    assert p.prefill_layers_s(400, 1, 1) == pytest.approx(0.3)
    assert p.decode_time_s("int8", 200, share=0.5) == pytest.approx(0.02)
    assert p.encode_time_s("int8", 400) == pytest.approx(0.04)
    assert p.has_level("int8") and not p.has_level("int4")
    with pytest.raises(ProfileError, match="no timing for level 'int4'"):
        p.decode_time_s("int4", 100)
    with pytest.raises(ValueError):
        p.prefill_layers_s(100, 1, 2)
    assert "test cpu" in p.describe()


@pytest.mark.parametrize("change,message", [
    (dict(format="x"), "not a receiver profile"),
    (dict(version=2), "unsupported profile version"),
    (dict(layers=0), "'layers'"),
    (dict(tokens=[100, 100, 400]), "strictly increasing"),
    (dict(tokens=[]), "'tokens'"),
    (dict(text_prefill_s=[1.0, 2.0]), "'text_prefill_s'"),
    (dict(head_s=[0.1, -0.1, 0.1]), "'head_s'"),
    (dict(question_prefill_s=[0.1, float("nan"), 0.1]), "'question_prefill_s'"),
    (dict(layer_s=[[0.1], [0.1], [0.1]]), "layer_s"),
    (dict(codecs=[]), "'codecs'"),
    (dict(codecs={"int8": {"encode_s": [0, 0, 0], "decode_s": [0, 0, 0], "elements": [1, 2]}}), "'elements'"),
    (dict(model=""), "'model'"),
    (dict(question_tokens=True), "'question_tokens'"),
])
def test_malformed_profiles(change, message):
    with pytest.raises(ProfileError, match=message):
        ReceiverProfile.from_json(sample_json(**change), source="x.json")


def test_unreadable_files(tmp_path):
    with pytest.raises(ProfileError, match="cannot read"):
        ReceiverProfile.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ProfileError, match="not JSON"):
        ReceiverProfile.load(bad)
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ProfileError, match="not JSON"):
        ReceiverProfile.load(bad)
    with pytest.raises(ProfileError, match="not a JSON object"):
        ReceiverProfile.from_json([1, 2])


def test_measuring_a_tiny_model(tmp_path):
    from kvcodec.profile import assemble, decoder_layers, measure_point, write_profile

    lm = tiny_lm(layers=3)
    assert len(decoder_layers(lm.model)) == 3
    question = list(range(5, 12))
    points = []
    for n in (40, 20):
        point = measure_point(lm.model, [(7 * i) % 90 + 3 for i in range(n)], question, ["int8", "fp16"], 2)
        assert point["cache"].num_layers == 3 and point["cache"].layers[0].seq_len == n
        assert len(point["layer_s"]) == 3 and point["head_s"] >= 0
        assert sum(point["layer_s"]) + point["head_s"] == pytest.approx(point["question_prefill_s"])
        assert point["codecs"]["int8"]["bytes"] < point["codecs"]["fp16"]["bytes"]
        point.pop("cache")
        points.append(point)
    data = assemble(lm, points, levels=["int8", "fp16"], repeats=2, question_tokens=len(question))
    path = tmp_path / "sub" / "tiny.json"
    write_profile(data, path)
    profile = ReceiverProfile.load(path)
    assert profile.tokens == (20, 40) and profile.layers == 3 and profile.model == "tiny"
    assert set(profile.codecs) == {"int8", "fp16"} and profile.codecs["int8"].elements[1] > profile.codecs["int8"].elements[0]
    assert profile.meta["torch"] == torch.__version__ and profile.meta["statistic"] == "median"
    assert profile.meta["context_prefill_s"][0] > 0
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["tiny.json"]  # no temporary left behind


@pytest.mark.parametrize("name,model,layers", [("cpu-smollm2.json", "smollm2-135m", 30), ("cpu-gemma3.json", "gemma3-270m", 18)])
def test_committed_cpu_profiles(name, model, layers):
    from kvcodec.api import as_pipeline
    from kvcodec.profile import PROFILE_LEVELS

    profile = ReceiverProfile.load(ROOT / "profiles" / name)
    assert profile.model == model and profile.layers == layers and profile.device == "cpu"
    assert profile.tokens[0] <= 128 and profile.tokens[-1] >= 4096
    for level in PROFILE_LEVELS:
        assert profile.has_level(as_pipeline(level).describe()), level
    # prefill from text grows with the context; the question's prefill on a cache is cheaper
    assert list(profile.text_prefill_s) == sorted(profile.text_prefill_s)
    assert profile.question_time_s(2048) < profile.text_time_s(2048)
    for key in ("device_name", "torch", "transformers", "measured_at", "model_sha256"):
        assert profile.meta.get(key), key


@pytest.mark.model
def test_profile_command_on_smollm2(tmp_path):
    from kvcodec import cli

    out = tmp_path / "p.json"
    cli.main(["profile", "--tokens", "32,64", "--repeats", "1", "--level", "int8", "--level", "int4:axis=channel",
              "--out", str(out)])
    profile = ReceiverProfile.load(out)
    assert profile.model == "smollm2-135m" and profile.layers == 30 and profile.tokens == (32, 64)
    assert set(profile.codecs) == {"int8", "int4:axis=channel"}


def test_profile_command_rejects_bad_arguments(tmp_path, monkeypatch):
    from kvcodec import cli

    monkeypatch.setattr(cli, "_load", lambda *a, **k: pytest.fail("loaded a model"))
    for argv in (["profile", "--out", str(tmp_path / "p.json"), "--tokens", "12"],
                 ["profile", "--out", str(tmp_path / "p.json"), "--tokens", "a,b"],
                 ["profile", "--out", str(tmp_path / "no" / "p.json")],
                 ["profile", "--out", str(tmp_path)],
                 ["profile", "--out", str(tmp_path / "p.json"), "--level", "int4:nope=1"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2, argv
