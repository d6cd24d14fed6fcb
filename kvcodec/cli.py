"""The ``kvcodec`` command line.

    kvcodec simulate --link 100Mbps        the main job on the embedded default context
    kvcodec encode / decode / inspect      write, read and examine payload files
    kvcodec plugins                        list the installed codecs

Bad arguments get one line on stderr and exit status 2; an unreadable payload or a model
that cannot be loaded gets one line and exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from importlib import resources
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from kvcodec.errors import CodecError, DecodeError, KVCodecError, ModelError, SpecError

err_console = Console(stderr=True)


class InputError(click.UsageError):
    """A bad argument value: reported as one line, exit status 2."""


def _read_default(name: str) -> str:
    return resources.files("kvcodec").joinpath("data", name).read_text(encoding="utf-8").strip()


def _pipelines(values: tuple[str, ...]):
    from kvcodec.api import as_pipeline

    try:
        return [as_pipeline(v) for v in values]
    except SpecError as exc:
        raise InputError(str(exc)) from None


def _link(bandwidth: str, latency: str, mtu: str, header_bytes: str):
    from kvcodec_sim import Link, LinkSpecError

    try:
        return Link.parse(bandwidth, latency=latency, mtu=mtu, header_bytes=header_bytes)
    except (LinkSpecError, ValueError, TypeError) as exc:
        raise InputError(str(exc).splitlines()[0]) from None


def _check_model_args(model: str, device: str | None, dtype: str | None) -> None:
    """Reject a bad --model, --device or --dtype before any expensive work (exit status 2)."""
    from kvcodec.models import MODELS, resolve_device, resolve_dtype

    if model not in MODELS and not Path(model).expanduser().is_file():
        raise InputError(f"unknown model {model!r}; use {', '.join(sorted(MODELS))} or the path of a .gguf file")
    try:
        resolve_dtype(dtype, resolve_device(device))
    except ModelError as exc:
        raise InputError(str(exc)) from None


def _load(model: str, device: str | None, dtype: str | None):
    from kvcodec.models import load_model

    _check_model_args(model, device, dtype)

    with err_console.status(f"loading {model}…") as status:
        return load_model(model, device=device, dtype=dtype, progress=lambda msg: status.update(msg))


def _check_against_model(lm, pipelines, tokens: int | None = None) -> None:
    """Reject pipelines that cannot fit this model (layer out of range, group size that does
    not divide head_dim) and a --tokens beyond its context, right after loading it and
    before any prefill: a one-token dummy cache of the model's geometry goes through each."""
    import torch

    from kvcodec import api
    from kvcodec.cache import SLIDING_ATTENTION, KVCache, LayerKV

    cfg = lm.model.config.get_text_config()
    limit = getattr(cfg, "max_position_embeddings", None)
    if tokens is not None and limit and tokens > limit:
        raise InputError(f"--tokens {tokens} exceeds {lm.name}'s context of {limit} tokens")
    heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers)
    zeros = torch.zeros(1, heads, 1, head_dim)
    dummy = KVCache(
        LayerKV.contiguous(zeros, zeros, layer_type=t, sliding_window=cfg.sliding_window if t == SLIDING_ATTENTION else None)
        for t in types
    )
    for pipeline in pipelines:
        try:
            api.encode(dummy, pipeline)
        except CodecError as exc:
            raise InputError(f"pipeline {pipeline.describe()!r} does not fit {lm.name}: {exc}") from None


def _text_file(path: str | None, default_name: str | None = None) -> str:
    if path is None:
        return _read_default(default_name) if default_name else ""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else 'not UTF-8 text'}")


model_option = click.option(
    "--model", default="smollm2-135m", show_default=True, help="smollm2-135m, gemma3-270m or a local .gguf path"
)
device_option = click.option("--device", default=None, help="cpu or cuda (default: cuda when available)")
dtype_option = click.option("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA, fp32 on CPU)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kvcodec")
def cli() -> None:
    """Compress LLM KV caches with composable codecs, send them over a simulated link,
    and see the bytes and the time to first token."""


@cli.command()
@click.option("--link", "bandwidth", default="100Mbps", show_default=True, help="link bandwidth: 100Mbps, 1Gbps, 12.5MB/s…")
@click.option("--latency", default="0ms", show_default=True, help="one-way propagation delay: 10ms, 0.5s…")
@click.option("--mtu", default="1500", show_default=True, help="largest packet on the wire, headers included (bytes)")
@click.option("--header-bytes", default="40", show_default=True, help="per-packet header overhead (bytes; 40 = IPv4 + TCP)")
@model_option
@click.option("--context", "context_file", default=None, help="UTF-8 text file to prefill (default: embedded prose)")
@click.option("--question", default=None, help="question the receiver asks (default: embedded)")
@click.option("--tokens", type=click.IntRange(min=16, max=131072), default=None, help="cut or repeat the context to N tokens")
@click.option("--pipeline", "pipelines", multiple=True, help="pipeline spec (repeatable; default: a standard set)")
@click.option("--max-new-tokens", type=click.IntRange(1, 512), default=24, show_default=True)
@device_option
@dtype_option
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def simulate(bandwidth, latency, mtu, header_bytes, model, context_file, question, tokens, pipelines, max_new_tokens, device, dtype, as_json):
    """Prefill a real model, encode its KV cache with each pipeline, send it over a
    simulated link, and compare TTFT with sending text and recomputing."""
    from kvcodec.simulate import DEFAULT_PIPELINES, run

    link = _link(bandwidth, latency, mtu, header_bytes)
    parsed = _pipelines(pipelines or DEFAULT_PIPELINES)
    context = _text_file(context_file, "default_context.txt")
    if not context.strip():
        raise InputError(f"context file {context_file} is empty")
    question = question or _read_default("default_question.txt")
    lm = _load(model, device, dtype)
    _check_against_model(lm, parsed, tokens)
    with err_console.status("running…") as status:
        report = run(lm, context, question, parsed, link, tokens=tokens, max_new_tokens=max_new_tokens, on_step=status.update)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    _print_report(report)


def _wide_console() -> Console:
    """A console for tables: the terminal's width, or 160 columns when output is not a terminal."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _print_report(report) -> None:
    console = _wide_console()
    link = report.link
    title = (
        f"{report.model} · {report.context_tokens} context tokens · {report.dtype} on {report.device} · "
        f"link {link.bandwidth_bps / 1e6:g} Mbit/s, {link.latency_s * 1e3:g} ms, MTU {link.mtu_bytes} B, "
        f"{link.header_bytes} B/packet header"
    )
    table = Table(title=title, title_justify="left")
    for col in ("pipeline", "bytes", "× FP16", "bits/elem", "rel. error", "encode ms", "decode ms",
                "transfer ms", "receiver ms", "TTFT ms", "same answer"):
        table.add_column(col, justify="left" if col == "pipeline" else "right")
    for r in report.rows:
        table.add_row(
            r.pipeline,
            f"{r.bytes:,}",
            f"{r.ratio_fp16:.3f}",
            f"{r.bits_per_element:.3f}",
            "—" if r.rel_error is None else f"{r.rel_error:.4f}",
            f"{r.encode_s * 1e3:.0f}",
            f"{r.decode_s * 1e3:.0f}",
            f"{r.transfer_s * 1e3:.1f}",
            f"{r.receiver_s * 1e3:.0f}",
            f"{r.ttft_s * 1e3:.0f}",
            "yes" if r.same_answer else "no",
        )
    console.print(table)
    console.print(
        f"Receiver compute model: this machine ({report.device}, {report.dtype}), measured in this run: "
        f"question prefill on a received cache {report.prefill_question_s * 1e3:.0f} ms; prefill of context + "
        f"question from text {report.prefill_full_s * 1e3:.0f} ms. TTFT = encode + transfer + decode + receiver; "
        f"transfer = SimPy link delivery of len(payload) bytes (payload + {link.header_bytes} B per packet, "
        f"+ {link.latency_s * 1e3:g} ms propagation)."
    )
    console.print(f"Question: {report.question}")
    console.print(f"Answer from the uncompressed cache: {report.reference_answer!r}")
    for r in report.rows:
        if not r.same_answer:
            console.print(f"  {r.pipeline}: {r.answer!r}")


@cli.command()
@model_option
@click.option("--context", "context_file", default=None, help="UTF-8 text file to prefill (default: embedded prose)")
@click.option("--pipeline", "spec", default="k=int4:axis=channel v=int4", show_default=True, help="pipeline spec")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True), help="payload file to write")
@device_option
@dtype_option
def encode(model, context_file, spec, output, device, dtype):
    """Prefill CONTEXT with the model (sender side) and write its encoded KV cache to a payload file.

    The context is formatted as the first part of the model's prompt (see kvcodec.prompts);
    the receiver appends the question with `kvcodec decode`.
    """
    from kvcodec import api
    from kvcodec.generate import prefill
    from kvcodec.prompts import split_prompt

    (pipeline,) = _pipelines((spec,))
    context = _text_file(context_file, "default_context.txt")
    if not context.strip():
        raise InputError(f"context file {context_file} is empty")
    target = Path(output)
    if not target.parent.is_dir() or target.is_dir() or not target.name:
        raise InputError(f"cannot write {output!r}: no such folder, or it is a folder")
    lm = _load(model, device, dtype)
    _check_against_model(lm, [pipeline])
    ids = split_prompt(lm.tokenizer, context, "", chat=lm.chat).context_ids
    cache = prefill(lm.model, ids)
    try:
        payload = api.encode(cache, pipeline)
    except CodecError as exc:
        raise InputError(str(exc)) from None
    tmp = target.with_name(f".{target.name}.partial")
    try:  # write then rename, so a failed write never leaves a truncated payload behind
        tmp.write_bytes(payload)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {output}: {exc.strerror}") from None
    err_console.print(
        f"wrote {output}: {len(payload):,} bytes for {len(ids)} tokens "
        f"({8 * len(payload) / cache.num_elements:.3f} bits per KV element, pipeline {pipeline})"
    )


def _read_payload(path: str) -> bytes:
    if not Path(path).is_file():
        raise InputError(f"cannot read {path}: not a regular file")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None


@cli.command()
@click.argument("payload", type=click.Path(dir_okay=False))
@model_option
@click.option("--question", default=None, help="question to append (default: embedded)")
@click.option("--max-new-tokens", type=click.IntRange(1, 512), default=32, show_default=True)
@device_option
@dtype_option
def decode(payload, model, question, max_new_tokens, device, dtype):
    """Decode PAYLOAD into a KV cache (receiver side), append the question and generate."""
    from kvcodec import api
    from kvcodec.generate import greedy
    from kvcodec.prompts import split_prompt

    data = _read_payload(payload)
    cache = api.decode(data)
    lm = _load(model, device, dtype)
    _check_geometry(cache, lm)
    question = question or _read_default("default_question.txt")
    ids = split_prompt(lm.tokenizer, "", question, chat=lm.chat).question_ids
    out = greedy(lm.model, lm.tokenizer, cache.to(device=lm.device, dtype=lm.dtype), ids, max_new_tokens=max_new_tokens)
    click.echo(out.text)


def _check_geometry(cache, lm) -> None:
    cfg = lm.model.config.get_text_config()
    layers = cfg.num_hidden_layers
    heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    got = (cache.num_layers, cache[0].kv_heads, cache[0].head_dim)
    if got != (layers, heads, head_dim):
        raise DecodeError(
            f"payload geometry (layers, kv_heads, head_dim) = {got} does not fit {lm.name} {(layers, heads, head_dim)}"
        )
    if cache.batch_size != 1 or any(l.values.shape[-1] != head_dim for l in cache):
        raise DecodeError(f"payload has batch {cache.batch_size} or a value head_dim other than {head_dim}; "
                          f"{lm.name} takes batch 1 and head_dim {head_dim}")
    types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * layers)
    if [l.layer_type for l in cache] != types:
        raise DecodeError(f"payload layer types (full / sliding attention) do not match {lm.name}")


@cli.command()
@click.argument("payload", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
def inspect(payload, as_json):
    """Verify PAYLOAD (magic, version, every checksum) and show its header and sections."""
    import attrs as _attrs

    from kvcodec import api

    info = api.inspect(_read_payload(payload))
    if as_json:
        click.echo(json.dumps(_attrs.asdict(info), indent=2))
        return
    console = _wide_console()
    console.print(
        f"kvcodec payload v{info.version}: {info.total_bytes:,} bytes, header {info.header_bytes} bytes, "
        f"batch {info.batch}, {len(info.layers)} layers, {info.elements:,} KV elements, "
        f"{8 * info.total_bytes / max(info.elements, 1):.3f} bits per element; checksums OK"
    )
    if info.cache_stages:
        console.print("cache stages: " + " ".join(info.cache_stages))
    table = Table()
    for col in ("layer", "type", "kv_heads", "tokens", "seen", "head_dim", "dtype", "keys", "values", "bytes"):
        table.add_column(col)
    for l in info.layers:
        table.add_row(str(l.index), l.layer_type.replace("_attention", ""), str(l.kv_heads), str(l.seq_len),
                      str(l.seen_tokens), str(l.head_dim), l.dtype, l.keys, l.values, f"{l.wire_bytes:,}")
    console.print(table)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
def plugins(as_json):
    """List the installed codecs: name, family, accepts → produces, and the distribution
    providing it; then the plugins that loaded, what KVCODEC_PLUGINS left out, and failures."""
    from kvcodec.plugins import ENV_VAR, get_registry, plugin_report

    reg = get_registry()
    rows = [
        {
            "name": info.name,
            "family": info.family,
            "accepts": info.cls.accepts.value,
            "produces": info.cls.produces.value,
            "params": ", ".join(f"{k}: {t.__name__}" for k, t in info.cls.param_types().items()),
            "provider": info.provider,
        }
        for info in (reg.codecs[n] for n in reg.names())
    ]
    if as_json:
        click.echo(json.dumps({"codecs": rows, "plugins": list(reg.loaded), "failed": list(reg.failed),
                               "skipped": list(reg.skipped), "selection": os.environ.get(ENV_VAR)}, indent=2))
        return
    table = Table(title="kvcodec codecs")
    for col in ("name", "family", "accepts → produces", "parameters", "provided by"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["family"], f"{r['accepts']} → {r['produces']}", r["params"], r["provider"])
    _wide_console().print(table)
    for line in plugin_report(reg):
        if line.startswith("failed"):
            err_console.print(line)
        else:
            click.echo(line)


def _task_options(task, values: tuple[str, ...]) -> dict:
    """``key=value`` task options, converted to the type of the task's default."""
    from kvcodec.spec import convert

    options = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not eq or key not in task.options:
            known = ", ".join(f"{k}={v!r}" for k, v in task.options.items() if k != "count_tokens") or "none"
            raise InputError(f"bad --option {item!r} for task {task.name}; its options: {known}")
        default = task.options[key]
        typ = type(default) if default is not None and not callable(default) else str
        try:
            options[key] = convert(value, typ)
        except ValueError as exc:
            raise InputError(f"--option {key}: {exc}") from None
    return options


def _summary_table(rows, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("pipeline", "n", "score", "% of full [95% CI]", "agree", "ΔNLL", "bytes", "× FP16", "bits/elem"):
        table.add_column(col, justify="left" if col == "pipeline" else "right")
    for r in rows:
        pct = "—" if r.percent != r.percent else f"{r.percent:.1f} [{r.low:.1f}, {r.high:.1f}]"
        table.add_row(
            r.pipeline, str(r.n), f"{r.score:.3f}", pct, f"{r.agreement:.2f}",
            "—" if r.delta_nll is None else f"{r.delta_nll:+.3f}", f"{r.bytes:,.0f}", f"{r.ratio_fp16:.3f}",
            f"{r.bits_per_element:.2f}",
        )
    return table


def _run_eval(model, task_name, specs, n, seed, data_dir, results_path, options, max_new_tokens, batch_size, workers, processes, shard, device, dtype,
              lm=None, show=True):
    """Evaluate ``specs`` (loading the model unless ``lm`` is given); print the summary table
    (when ``show``) and return the loaded model and the summaries of this run's samples."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kvcodec.harness import Settings, evaluate
    from kvcodec.report import summarize
    from kvcodec.results import FULL, ResultsFile, ResultsError
    from kvcodec.tasks import get_task, resolve_data_dir

    shard_of = _shard(shard) if shard is not None else None
    try:
        task = get_task(task_name)
        data = resolve_data_dir(data_dir)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    pipelines = _pipelines(tuple(specs))
    opts = _task_options(task, tuple(options))
    try:
        results = ResultsFile(results_path)
    except ResultsError as exc:
        raise InputError(str(exc)) from None
    lm = lm or _load(model, device, dtype)
    _check_against_model(lm, pipelines)
    if workers is None:
        workers = min(8, (os.cpu_count() or 1) - 1) if lm.device.type == "cuda" else 0
    load_opts = dict(opts)
    if task.name == "needle":
        load_opts["count_tokens"] = lambda text: len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    try:
        samples = task.load(data, n=n, seed=seed, **load_opts)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if shard_of is not None:
        samples = samples[shard_of[0] :: shard_of[1]]
    if processes > 1:
        child_args = dict(model=model or lm.name, task=task.name, n=n, seed=seed, data_dir=str(data), options=options,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, device=str(lm.device),
                          dtype=str(lm.dtype).replace("torch.", ""))
        _run_processes(processes, workers, [p.describe() for p in pipelines], results, child_args,
                       total=len(samples) * (len(pipelines) + 1), label=f"{lm.name} · {task.name}", device=lm.device)
        samples_done = samples
    else:
        samples_done = None
    total = len(samples) * (len(pipelines) + 1)
    with (_null_progress() if samples_done is not None else Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err_console,
    )) as progress:
        if samples_done is None:
            bar = progress.add_task(f"{lm.name} · {task.name}", total=total, rate="")
            started = time.perf_counter()

            def on_sample(done, new):
                elapsed = time.perf_counter() - started
                progress.update(bar, advance=new, rate=f"{done / max(elapsed, 1e-9):.2f} results/s")

            stats = evaluate(
                lm, task, samples, pipelines, results, task_options=opts,
                settings=Settings(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, workers=workers),
                on_sample=on_sample,
            )
            progress.update(bar, completed=total)
            err_console.print(
                f"{stats.results} new results ({stats.skipped} already in {results_path}) in {stats.seconds:.1f} s: "
                f"{stats.results_per_second:.2f} sample×pipeline results per second on {lm.device}"
                f" (prefill {stats.prefill_seconds:.1f} s, waiting for codecs {stats.codec_seconds:.1f} s with"
                f" {workers} workers, receiver {stats.receiver_seconds:.1f} s)"
            )
    wanted = {FULL} | {p.describe() for p in pipelines}
    ids = {s.id for s in samples}
    mine = [r for r in results.records if r["model_sha256"] == lm.sha256 and r["task"] == task.name
            and r["sample_id"] in ids and r["pipeline"] in wanted and r.get("task_options", {}) == opts
            and r["dtype"] == str(lm.dtype).replace("torch.", "")]
    rows = summarize(mine)
    if show:
        _wide_console().print(_summary_table(rows, f"{lm.name} · {task.name} {opts or ''} · n={len(samples)}"))
    return lm, rows


def _shard(text: str) -> tuple[int, int]:
    index, slash, count = text.partition("/")
    if not slash or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise InputError(f"--shard takes I/K with 0 ≤ I < K, got {text!r}")
    return int(index), int(count)


class _null_progress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _run_processes(processes: int, workers, specs: list[str], results, args: dict, *, total: int, label: str, device) -> None:
    """Run ``kvcodec eval`` in ``processes`` child processes, child ``i`` on samples ``i, i+K, …``,
    then append their new records to ``results``. Each child starts from a copy of the
    records already in ``results`` (so it resumes like a single process) and writes its own
    JSON-lines file; progress is the line count of those files."""
    import subprocess
    import tempfile

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kvcodec.results import ResultsFile, read_records, record_key

    if workers is None:
        workers = max(1, ((os.cpu_count() or 1) - 1) // processes) if device.type == "cuda" else 0
    with tempfile.TemporaryDirectory(prefix="kvcodec-eval-") as tmp:
        tmp = Path(tmp)
        (tmp / "pipelines.txt").write_text("\n".join(specs) + "\n", encoding="utf-8")
        seed_lines = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in results.records)
        children, logs, shards = [], [], []
        for i in range(processes):
            shard = tmp / f"shard-{i}.jsonl"
            shard.write_text(seed_lines, encoding="utf-8")
            shards.append(shard)
            cmd = [sys.executable, "-m", "kvcodec", "eval", "--model", args["model"], "--task", args["task"],
                   "-n", str(args["n"]), "--seed", str(args["seed"]), "--data-dir", args["data_dir"],
                   "--pipeline-file", str(tmp / "pipelines.txt"), "--results", str(shard),
                   "--max-new-tokens", str(args["max_new_tokens"]), "--batch-size", str(args["batch_size"]),
                   "--workers", str(workers), "--device", args["device"], "--dtype", args["dtype"],
                   "--shard", f"{i}/{processes}"]
            for opt in args["options"]:
                cmd += ["--option", opt]
            log = open(tmp / f"shard-{i}.log", "w", encoding="utf-8")
            logs.append(log)
            children.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        base = len(results.records)
        started = time.perf_counter()
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err_console) as progress:
            bar = progress.add_task(f"{label} · {processes} processes", total=total, rate="")
            while any(c.poll() is None for c in children):
                time.sleep(1.0)
                done = sum(max(_count_lines(sh) - base, 0) for sh in shards)
                rate = done / max(time.perf_counter() - started, 1e-9)
                progress.update(bar, completed=min(done, total), rate=f"{rate:.2f} results/s")
        seconds = time.perf_counter() - started
        for log in logs:
            log.close()
        failed = [i for i, c in enumerate(children) if c.returncode != 0]
        new = [r for r in read_records(shards) if results.get(record_key(r)) is None]
        # keep what finished even if a child failed, so a rerun resumes
        unique = list({record_key(r): r for r in new}.values())
        results.append(unique)
        if failed:
            tail = (tmp / f"shard-{failed[0]}.log").read_text(encoding="utf-8").strip().splitlines()[-1:]
            raise ModelError(f"eval process {failed[0]} of {processes} failed: {tail[0] if tail else 'no output'}")
    err_console.print(
        f"{len(unique)} new results in {seconds:.1f} s from {processes} processes with {workers} codec workers each: "
        f"{len(unique) / max(seconds, 1e-9):.2f} sample×pipeline results per second on {device}"
    )


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return 0


eval_options = [
    model_option,
    click.option("--task", required=True, help="squad, hotpotqa, triviaqa, mmlu or needle"),
    click.option("-n", "n", type=click.IntRange(min=1), default=50, show_default=True, help="number of samples"),
    click.option("--seed", type=int, default=0, show_default=True, help="sampling seed of the task"),
    click.option("--data-dir", default=None, help="data folder (default: $KVCODEC_DATA_DIR)"),
    click.option("--results", "results_path", default="results.jsonl", show_default=True, help="JSON-lines results file (appended, resumed)"),
    click.option("--option", "options", multiple=True, help="task option key=value (e.g. length=2048 for needle)"),
    click.option("--max-new-tokens", type=click.IntRange(1, 512), default=32, show_default=True),
    click.option("--batch-size", type=click.IntRange(1, 256), default=32, show_default=True, help="caches per forward pass"),
    click.option("--workers", type=click.IntRange(0, 64), default=None,
                 help="processes running the codecs while the model decodes (default: 0 on CPU, up to 8 on CUDA)"),
    click.option("--processes", type=click.IntRange(1, 16), default=1, show_default=True,
                 help="receiver processes sharing the device, each on a share of the samples (a tiny model's "
                      "decoding is launch-bound: several processes keep one GPU busy)"),
    click.option("--shard", default=None, hidden=True, help="I/K: only samples I, I+K, … (used by --processes)"),
    device_option,
    dtype_option,
]


def _with(options):
    def wrap(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return wrap


@cli.command(name="eval")
@click.option("--pipeline", "pipelines", multiple=True, help="pipeline spec (repeatable)")
@click.option("--pipeline-file", type=click.Path(dir_okay=False), default=None, help="file with one spec per line (# comments)")
@_with(eval_options)
def eval_command(pipelines, pipeline_file, model, task, n, seed, data_dir, results_path, options, max_new_tokens, batch_size, workers, processes, shard, device, dtype):
    """Measure answer quality against transmitted bytes: each pipeline's real payload, decoded,
    answers the task's questions; the table gives % of full with a 95 % paired bootstrap CI."""
    specs = list(pipelines)
    if pipeline_file:
        specs += [l.split("#", 1)[0].strip() for l in _text_file(pipeline_file).splitlines()]
        specs = [s for s in specs if s]
    if not specs:
        raise InputError("give at least one --pipeline or a --pipeline-file")
    _run_eval(model, task, specs, n, seed, data_dir, results_path, options, max_new_tokens, batch_size, workers, processes, shard, device, dtype)


def sweep_specs(bits, axes, targets, protect, layerwise: int | None) -> list[str]:
    """The grid of pipeline specs a sweep evaluates (see ``kvcodec sweep --help``)."""
    specs = []
    for b in bits:
        for axis in axes:
            stage = f"int{b}" + (":axis=channel" if axis == "channel" else "")
            for target in targets:
                base = {"kv": stage, "k": f"k={stage} v=identity", "v": f"k=identity v={stage}"}[target]
                for layers in protect:
                    specs.append(base + (f" L{layers}=identity" if layers != "none" else ""))
            if layerwise is not None:
                specs += [f"identity L{i}={stage}" for i in range(layerwise)]
    return list(dict.fromkeys(specs))


def _int_list(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        if not lo.strip().isdigit() or (hi and not hi.strip().isdigit()):
            raise InputError(f"expected numbers like 2,3,4 or 2-8, got {text!r}")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


@cli.command()
@click.option("--bits", default="2,3,4,5,6,8", show_default=True, help="widths: 2,3,4 or 2-8")
@click.option("--axis", "axes", default="token,channel", show_default=True, help="token, channel or both")
@click.option("--target", "targets", default="kv", show_default=True, help="kv (both), k (keys only), v (values only); comma list")
@click.option("--protect", default="none", show_default=True, help="layers kept at full precision: none, 0, 0-1; comma list of choices separated by ';'")
@click.option("--layerwise", type=click.IntRange(min=1), default=None, help="also one layer at a time quantized, the rest full precision (give the layer count)")
@_with(eval_options)
def sweep(bits, axes, targets, protect, layerwise, model, task, n, seed, data_dir, results_path, options, max_new_tokens, batch_size, workers, processes, shard, device, dtype):
    """Evaluate a grid: bit widths × axes × keys/values × protected layers (× layer-wise)."""
    axes_l = [a.strip() for a in axes.split(",")]
    targets_l = [t.strip() for t in targets.split(",")]
    if any(a not in ("token", "channel") for a in axes_l) or any(t not in ("kv", "k", "v") for t in targets_l):
        raise InputError("--axis takes token,channel and --target takes kv,k,v")
    specs = ["fp16"] + sweep_specs(_int_list(bits), axes_l, targets_l, [p.strip() for p in protect.split(";")], layerwise)
    err_console.print(f"sweep: {len(specs)} pipelines")
    _run_eval(model, task, specs, n, seed, data_dir, results_path, options, max_new_tokens, batch_size, workers, processes, shard, device, dtype)


@cli.command()
@click.option("--bits", type=click.IntRange(2, 8), default=4, show_default=True, help="width diagnosed, one layer at a time")
@click.option("--axis", type=click.Choice(["token", "channel"]), default="token", show_default=True)
@click.option("--threshold", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="ΔNLL (nats per answer token) above which a layer's keys or values are protected")
@click.option("--protect-with", default="int8", show_default=True, help="chain that protected keys/values are sent with")
@click.option("--recipe", "recipe_path", required=True, type=click.Path(dir_okay=False, writable=True),
              help="write the recipe (a pipeline file for eval/simulate --pipeline-file) here")
@click.option("--markdown", "md_path", default=None, type=click.Path(dir_okay=False), help="write the damage map table here")
@click.option("--damage-map", "damage_path", default=None, type=click.Path(dir_okay=False), help="write the heat-map PNG here")
@_with(eval_options)
def diagnose(bits, axis, threshold, protect_with, recipe_path, md_path, damage_path, model, task, n, seed, data_dir,
             results_path, options, max_new_tokens, batch_size, workers, processes, shard, device, dtype):
    """Layer-wise sensitivity → damage map → recipe, verified with an eval run.

    Quantizes one layer at a time (keys and values separately) at --bits, the rest at full
    precision; protects the layers whose ΔNLL exceeds --threshold when damage is
    concentrated, else raises the uniform width (specs/diagnose.md)."""
    from kvcodec.diagnose import cell_specs, cells_from, damage_table, diagnose as run_diagnosis, stage_spec, write_recipe
    from kvcodec.report import damage_plot, layer_damage

    stage = stage_spec(bits, axis)
    _pipelines((f"{stage} L0.k={protect_with}",))  # a bad --protect-with fails before the model loads
    lm = _load(model, device, dtype)
    num_layers = lm.model.config.get_text_config().num_hidden_layers
    specs = [stage, *cell_specs(num_layers, stage)]
    err_console.print(f"diagnose: {len(specs)} pipelines ({num_layers} layers × keys, values + uniform {stage})")
    args = (model, task, specs, n, seed, data_dir, results_path, options, max_new_tokens, batch_size, workers, processes, shard, device, dtype)
    lm, rows = _run_eval(*args, lm=lm, show=False)
    try:
        diagnosis = run_diagnosis(cells_from(rows, stage), stage, threshold=threshold, protect_with=protect_with)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    table = damage_table(diagnosis)
    click.echo(f"## {lm.name} · {task} · one layer at a time in {stage} (n = {n})\n\n{table}")
    click.echo(diagnosis.reason)
    if md_path:
        Path(md_path).write_text(f"# {lm.name} · {task} · {stage} one layer at a time\n\n{table}\n{diagnosis.reason}\n")
    if damage_path:
        damage_plot(layer_damage(rows), damage_path)
    header = [f"kvcodec diagnose --model {lm.name} --task {task} -n {n} --bits {bits} --axis {axis} --threshold {threshold:g}"]
    write_recipe(recipe_path, diagnosis, header)
    click.echo(f"recipe: {diagnosis.recipe}  (written to {recipe_path}); verifying it …")
    _, verify = _run_eval(*args[:2], [stage, diagnosis.recipe], *args[3:], lm=lm, show=True)
    by_name = {r.pipeline: r for r in verify}
    mine = by_name.get(_pipelines((diagnosis.recipe,))[0].describe())
    if mine is not None:
        click.echo(
            f"verified: {mine.pipeline}: {mine.percent:.1f} % of full [{mine.low:.1f}, {mine.high:.1f}], "
            f"ΔNLL {mine.delta_nll if mine.delta_nll is not None else float('nan'):+.3f}, {mine.bytes:,.0f} bytes "
            f"({mine.ratio_fp16:.3f} × FP16, {mine.bits_per_element:.2f} bits/element)"
        )


@cli.command(name="eval-progressive")
@click.option("--stream", "streams", multiple=True, help="progressive stream spec (repeatable; default prog8): one prog stage per chain")
@click.option("--policy", "policies", multiple=True,
              help="adaptive policy p1>=THRESHOLD,start=PLANES (repeatable; default p1>=0.5,start=3)")
@click.option("--fixed", default="all", show_default=True, help="fixed prefixes to report too: all, none, or plane counts like 2-8")
@click.option("--planes-per-message", default="1", show_default=True, help="planes per message: N, or a schedule like 3+1+1+1+1+1")
@_with(eval_options[:9] + [device_option, dtype_option])  # model … batch-size, device, dtype
def eval_progressive(streams, policies, fixed, planes_per_message, model, task, n, seed, data_dir, results_path, options,
                     max_new_tokens, batch_size, device, dtype):
    """Progressive bitstream against fixed widths: the receiver decodes after the first bit
    planes and asks for more only when its first answer token is unsure (specs/progressive.md);
    records go to the results file like eval's, one row per policy and per fixed prefix."""
    from kvcodec.adaptive import Policy, evaluate_adaptive, stream_label
    from kvcodec.progressive import stream_bits
    from kvcodec.harness import Settings
    from kvcodec.report import summarize
    from kvcodec.results import FULL, ResultsError, ResultsFile
    from kvcodec.tasks import get_task, resolve_data_dir

    try:
        parsed_policies = [Policy.parse(p) for p in (policies or ("p1>=0.5,start=3",))]
    except (ValueError, TypeError) as exc:
        raise InputError(f"--policy: {exc}") from None
    text = planes_per_message.strip()
    if not all(part.isdigit() and int(part) > 0 for part in text.split("+")):
        raise InputError(f"--planes-per-message takes N or N+N+…, got {planes_per_message!r}")
    schedule = int(text) if "+" not in text else [int(p) for p in text.split("+")]
    fixed_planes = None if fixed == "all" else [] if fixed == "none" else _int_list(fixed)
    stream_specs = [p.describe() for p in _pipelines(tuple(streams or ("prog8",)))]
    for spec in stream_specs:
        stream_bits(spec)  # not a progressive stream: SpecError/CodecError, exit 2, before the model loads
    try:
        task_obj = get_task(task)
        data = resolve_data_dir(data_dir)
        results = ResultsFile(results_path)
    except (ValueError, ResultsError) as exc:
        raise InputError(str(exc)) from None
    opts = _task_options(task_obj, tuple(options))
    lm = _load(model, device, dtype)
    _check_against_model(lm, _pipelines(tuple(stream_specs)))
    load_opts = dict(opts)
    if task_obj.name == "needle":
        load_opts["count_tokens"] = lambda t: len(lm.tokenizer(t, add_special_tokens=False)["input_ids"])
    try:
        samples = task_obj.load(data, n=n, seed=seed, **load_opts)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    names = {FULL}
    for spec in stream_specs:
        with err_console.status(f"{lm.name} · {task_obj.name} · {spec} …"):
            try:
                stats = evaluate_adaptive(
                    lm, task_obj, samples, results, spec=spec, policies=parsed_policies, fixed_planes=fixed_planes,
                    planes_per_message=schedule, task_options=opts,
                    settings=Settings(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed),
                )
            except ValueError as exc:
                raise InputError(str(exc)) from None
        err_console.print(
            f"{spec}: {stats.results} new results ({stats.skipped} already there) in {stats.seconds:.1f} s"
        )
        for name, planes in stats.planes.items():
            if planes:
                hist = {k: planes.count(k) for k in sorted(set(planes))}
                err_console.print(f"  {name}: planes chosen {hist}")
        label = stream_label(spec, schedule)
        names |= {r["pipeline"] for r in results.records if r["pipeline"].startswith(label)}
    ids = {s.id for s in samples}
    mine = [r for r in results.records if r["model_sha256"] == lm.sha256 and r["task"] == task_obj.name
            and r["sample_id"] in ids and r["pipeline"] in names and r.get("task_options", {}) == opts
            and r["dtype"] == str(lm.dtype).replace("torch.", "")]
    _wide_console().print(_summary_table(summarize(mine), f"{lm.name} · {task_obj.name} · progressive · n={len(samples)}"))


@cli.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--markdown", "md_path", default=None, type=click.Path(dir_okay=False), help="write the table here")
@click.option("--plot", "png_path", default=None, type=click.Path(dir_okay=False), help="write the rate–accuracy PNG here")
@click.option("--damage-map", "damage_path", default=None, type=click.Path(dir_okay=False),
              help="write the layer-wise damage map (heat map of one-layer-at-a-time pipelines) PNG here")
@click.option("--by-option", "by_option", default=None, type=(str, click.Path(dir_okay=False)),
              help="OPTION PNG: plot %% of full against a numeric task option (e.g. length needle.png)")
def report(results, md_path, png_path, damage_path, by_option):
    """Summarize results files: a markdown table (with a layer-wise damage map when the results
    hold one-layer-at-a-time pipelines) and plots."""
    from kvcodec.report import damage_markdown, damage_plot, layer_damage, markdown, option_plot, plot, summarize
    from kvcodec.results import ResultsError, read_records

    missing = [r for r in results if not Path(r).is_file()]
    if missing:
        raise InputError(f"no such results file: {missing[0]}")
    try:
        rows = summarize(read_records(results))
    except ResultsError as exc:
        raise InputError(str(exc)) from None
    cells = layer_damage(rows)
    text = markdown(rows)
    if cells:
        text += "\n## Layer-wise damage map\n\n" + damage_markdown(cells)
    if damage_path and not cells:
        raise InputError("--damage-map: the results hold no one-layer-at-a-time pipelines (kvcodec sweep --layerwise)")
    if md_path:
        Path(md_path).write_text(text, encoding="utf-8")
    if png_path:
        plot(rows, png_path)
    if damage_path:
        damage_plot(cells, damage_path)
    if by_option:
        try:
            option_plot(rows, by_option[0], by_option[1])
        except ValueError as exc:
            raise InputError(f"--by-option: {exc}") from None
    click.echo(text)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"kvcodec: warning: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning every user error into one line and an exit status."""
    warnings.showwarning = _one_line_warning
    try:
        cli.main(args=argv, prog_name="kvcodec", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("kvcodec: aborted")
        sys.exit(130)
    except click.UsageError as exc:
        click.echo(f"kvcodec: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except (SpecError, CodecError) as exc:
        click.echo(f"kvcodec: error: {exc}", err=True)
        sys.exit(2)
    except (DecodeError, ModelError, KVCodecError) as exc:
        click.echo(f"kvcodec: error: {exc}", err=True)
        sys.exit(1)
