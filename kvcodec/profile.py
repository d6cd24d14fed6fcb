"""Measure a receiver: what the simulator needs to know about the machine that gets the cache.

With the real model on the current device, for each context length ``N`` of a grid:

* **text path** — prefill of ``N`` context tokens plus the question from scratch, until
  the first token is chosen (logits of the last position only, as a server computes them);
* **KV path** — the question's prefill on a received cache of ``N`` tokens, until the
  first token is chosen, with the time of each decoder layer measured by forward hooks
  (a device synchronisation before each timestamp on CUDA); the remainder (embedding,
  final norm, LM head, argmax) is the *head* time;
* **codecs** — encode and decode (wire bytes → cache on the device) of the whole cache at
  each level.

Each time is the median of ``repeats`` runs. At each length the sender's prefill of the
context runs first (kept as ``context_prefill_s``, for information), so the kernels are warm
for that length when the receiver's times are taken. The result is a JSON
object in the format of ``specs/streaming.md`` §3, read without torch by
:class:`kvcodec_sim.receiver.ReceiverProfile`::

    kvcodec profile --model smollm2-135m --out profiles/cpu-smollm2.json
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from kvcodec import api
from kvcodec.cache import KVCache
from kvcodec_sim.receiver import PROFILE_FORMAT, PROFILE_VERSION

__all__ = ["DEFAULT_TOKENS", "PROFILE_LEVELS", "decoder_layers", "measure_point", "measure_profile",
           "write_profile", "provenance"]

DEFAULT_TOKENS = (128, 256, 512, 1024, 2048, 4096)
#: Levels measured by default: ``kvcodec simulate``'s default pipelines and the adaptive levels.
PROFILE_LEVELS = (
    "identity",
    "fp16",
    "int8",
    "int4",
    "int4:axis=channel",
    "int3:axis=channel",
    "int2:axis=channel",
    "k=int4:axis=channel v=int4",
    "int4:axis=channel L0=fp16",
)

Step = Callable[[str], None]


def decoder_layers(model) -> list:
    """The model's decoder layers, in order (``model.model.layers`` for Llama and Gemma-3;
    otherwise the first ``ModuleList`` as long as ``num_hidden_layers``)."""
    cfg = model.config.get_text_config()
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is not None and len(layers) == cfg.num_hidden_layers:
        return list(layers)
    for _name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == cfg.num_hidden_layers:
            return list(module)
    raise ValueError(f"cannot find the {cfg.num_hidden_layers} decoder layers of {type(model).__name__}")


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _ids(ids, device) -> torch.Tensor:
    return torch.as_tensor(list(ids), dtype=torch.long, device=device).reshape(1, -1)


@torch.inference_mode()
def _first_token(model, ids: torch.Tensor, cache=None, start: int = 0) -> int:
    kw = {}
    if cache is not None:
        kw["position_ids"] = torch.arange(start, start + ids.shape[1], device=ids.device).unsqueeze(0)
    out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1, **kw)
    return int(out.logits[0, -1].argmax())


@torch.inference_mode()
def prefill_cache(model, ids: Sequence[int]) -> KVCache:
    """The KV cache of ``ids`` (the sender's prefill; logits of the last position only)."""
    out = model(input_ids=_ids(ids, model.device), use_cache=True, logits_to_keep=1)
    return KVCache.from_dynamic_cache(out.cache)


def text_prefill_time(model, ids: Sequence[int], repeats: int) -> float:
    """Median time to prefill ``ids`` from scratch and choose the first token."""
    x = _ids(ids, model.device)
    times = []
    for _ in range(repeats):
        _sync(model.device)
        t0 = time.perf_counter()
        _first_token(model, x)
        _sync(model.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def question_prefill_times(model, cache: KVCache, question_ids: Sequence[int], repeats: int) -> tuple[float, list[float], float]:
    """``(total, per-layer, head)`` medians of the question's prefill on ``cache``.

    Forward hooks on each decoder layer take a timestamp before and after it (after a
    device synchronisation on CUDA); ``head = total − Σ layers``. The cache is converted to
    the model's cache object before the clock starts, afresh for every run.
    """
    device = model.device
    layers = decoder_layers(model)
    marks: list[float] = []

    def stamp(*_args, **_kw):
        _sync(device)
        marks.append(time.perf_counter())

    handles = []
    for layer in layers:
        handles.append(layer.register_forward_pre_hook(lambda *a: stamp()))
        handles.append(layer.register_forward_hook(lambda *a: stamp()))
    x = _ids(question_ids, device)
    start = max(layer.seen_tokens for layer in cache)
    totals, per_layer = [], []
    try:
        for _ in range(repeats):
            dyn = cache.to(device=device).to_dynamic_cache()
            marks.clear()
            _sync(device)
            t0 = time.perf_counter()
            _first_token(model, x, dyn, start)
            _sync(device)
            totals.append(time.perf_counter() - t0)
            if len(marks) != 2 * len(layers):
                raise RuntimeError(f"layer hooks fired {len(marks)} times, expected {2 * len(layers)}")
            per_layer.append([marks[2 * i + 1] - marks[2 * i] for i in range(len(layers))])
    finally:
        for h in handles:
            h.remove()
    total = statistics.median(totals)
    layer_s = [statistics.median(run[i] for run in per_layer) for i in range(len(layers))]
    # keep head + Σ layers == total exactly; medians of parts need not add up, so scale
    # the layers down in the rare case they exceed the total's median
    if sum(layer_s) > total:
        layer_s = [t * total / sum(layer_s) for t in layer_s]
    return total, layer_s, total - sum(layer_s)


def codec_times(cache: KVCache, level: str, device, repeats: int) -> tuple[float, float, int]:
    """``(encode, decode, bytes)``: medians of encoding ``cache`` at ``level`` and of
    decoding the bytes into a cache on ``device``."""
    enc, dec = [], []
    payload = b""
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        payload = api.encode(cache, level)
        _sync(device)
        t1 = time.perf_counter()
        api.decode(payload, device=device)
        _sync(device)
        enc.append(t1 - t0)
        dec.append(time.perf_counter() - t1)
    return statistics.median(enc), statistics.median(dec), len(payload)


def measure_point(model, context_ids: Sequence[int], question_ids: Sequence[int], levels: Sequence[str],
                  repeats: int, on_step: Step | None = None) -> dict:
    """Everything measured at one context length ``len(context_ids)`` (see the module docstring).

    Returns ``{"tokens", "text_prefill_s", "context_prefill_s", "question_prefill_s",
    "layer_s", "head_s", "codecs": {level: {"encode_s", "decode_s", "elements", "bytes"}}}``
    and, under ``"cache"``, the cache itself (not JSON).
    """
    step = on_step or (lambda _m: None)
    n = len(context_ids)
    step(f"{n} tokens: sender prefill")  # first: it also warms the kernels up for this length
    _sync(model.device)
    t0 = time.perf_counter()
    cache = prefill_cache(model, context_ids)
    _sync(model.device)
    context_s = time.perf_counter() - t0
    step(f"{n} tokens: text prefill ({n} + {len(question_ids)} tokens)")
    text_s = text_prefill_time(model, list(context_ids) + list(question_ids), repeats)
    step(f"{n} tokens: question prefill on the cache, per layer")
    total, layer_s, head = question_prefill_times(model, cache, question_ids, repeats)
    codecs = {}
    for level in levels:
        step(f"{n} tokens: encode/decode {level}")
        enc, dec, nbytes = codec_times(cache, level, model.device, repeats)
        codecs[level] = {"encode_s": enc, "decode_s": dec, "elements": cache.num_elements, "bytes": nbytes}
    return {"tokens": n, "text_prefill_s": text_s, "context_prefill_s": context_s, "question_prefill_s": total,
            "layer_s": layer_s, "head_s": head, "codecs": codecs, "cache": cache}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(lm) -> dict:
    """Where and with what a profile was measured (the JSON's descriptive fields)."""
    import transformers

    from kvcodec import __version__

    device = torch.device(lm.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{_cpu_name()} ({os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads)"
    return {
        "device_name": name,
        "model_sha256": lm.sha256,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "kvcodec": __version__,
        "python": platform.python_version(),
        "host": f"{platform.system()} {platform.release()} {platform.machine()}",
        "measured_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def assemble(lm, points: Sequence[dict], *, levels: Sequence[str], repeats: int, question_tokens: int,
             extra: dict | None = None) -> dict:
    """The profile JSON object from measured points (sorted by tokens)."""
    points = sorted(points, key=lambda p: p["tokens"])
    data = {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "model": lm.name,
        "device": torch.device(lm.device).type,
        "dtype": str(lm.dtype).replace("torch.", ""),
        "layers": len(points[0]["layer_s"]),
        "question_tokens": question_tokens,
        "repeats": repeats,
        "statistic": "median",
        **provenance(lm),
        **(extra or {}),
        "tokens": [p["tokens"] for p in points],
        "text_prefill_s": [p["text_prefill_s"] for p in points],
        "context_prefill_s": [p["context_prefill_s"] for p in points],
        "question_prefill_s": [p["question_prefill_s"] for p in points],
        "layer_s": [p["layer_s"] for p in points],
        "head_s": [p["head_s"] for p in points],
        "codecs": {
            level: {key: [p["codecs"][level][key] for p in points] for key in ("encode_s", "decode_s", "elements", "bytes")}
            for level in levels
        },
    }
    return data


def context_of(tokenizer, chat: bool, context: str, question: str, tokens: int) -> tuple[list[int], list[int]]:
    """Context ids of exactly ``tokens`` tokens (the prompt's context part, repeated and cut)
    and the question ids, as :func:`kvcodec.prompts.split_prompt` lays them out."""
    from kvcodec.prompts import split_prompt

    parts = split_prompt(tokenizer, context, question, chat=chat)
    ids = list(parts.context_ids)
    while len(ids) < tokens:
        ids = ids + list(parts.context_ids)
    return ids[:tokens], list(parts.question_ids)


def measure_profile(lm, *, tokens: Sequence[int] = DEFAULT_TOKENS, levels: Sequence[str] = PROFILE_LEVELS,
                    repeats: int = 3, context: str, question: str, on_step: Step | None = None) -> dict:
    """Measure the receiver profile of ``lm`` on its device over the ``tokens`` grid."""
    step = on_step or (lambda _m: None)
    levels = [api.as_pipeline(level).describe() for level in levels]
    _, question_ids = context_of(lm.tokenizer, lm.chat, context, question, 1)
    step("warming up")
    warm_ids, _ = context_of(lm.tokenizer, lm.chat, context, question, min(64, min(tokens)))
    measure_point(lm.model, warm_ids, question_ids, levels, 1)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    points = []
    for n in tokens:
        context_ids, _ = context_of(lm.tokenizer, lm.chat, context, question, n)
        point = measure_point(lm.model, context_ids, question_ids, levels, repeats, step)
        point.pop("cache")
        points.append(point)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    extra = {"question": question, "load_average_1min": [load_before, load_after]}
    return assemble(lm, points, levels=levels, repeats=repeats, question_tokens=len(question_ids), extra=extra)


def write_profile(data: dict, path: str | os.PathLike) -> None:
    """Write the profile JSON atomically (a temporary file in the same folder, then a rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a profile is meant to be shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
