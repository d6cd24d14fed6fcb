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
import signal
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


def _check_against_model(lm, pipelines, tokens: int | None = None, what: str = "--tokens") -> None:
    """Reject pipelines that cannot fit this model (layer out of range, group size that does
    not divide head_dim) and a --tokens beyond its context, right after loading it and
    before any prefill: a one-token dummy cache of the model's geometry goes through each."""
    import torch

    from kvcodec import api
    from kvcodec.cache import SLIDING_ATTENTION, KVCache, LayerKV

    cfg = lm.model.config.get_text_config()
    limit = getattr(cfg, "max_position_embeddings", None)
    if tokens is not None and limit and tokens > limit:
        raise InputError(f"{what} {tokens} exceeds {lm.name}'s context of {limit} tokens")
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


#: layers per chunk of `kvcodec simulate --stream` (kvcodec.simulate.DEFAULT_LAYERS_PER_CHUNK)
DEFAULT_LAYERS_PER_CHUNK = 5


@cli.command()
@click.option("--link", "link_spec", default="100Mbps", show_default=True,
              help="channel: a bandwidth, then options (loss=1%, ge=, ge-clock=time, jitter=2ms, trace=FILE, queue=64kB, …; "
                   "specs/link-model.md §8)")
@click.option("--latency", default="0ms", show_default=True, help="one-way propagation delay: 10ms, 0.5s…")
@click.option("--mtu", default="1500", show_default=True, help="largest packet on the wire, headers included (bytes)")
@click.option("--header-bytes", default="40", show_default=True, help="per-packet header overhead (bytes; 40 = IPv4 + TCP)")
@click.option("--arq", "arq_text", default="", help="selective-repeat ARQ options: window=64,min-rto=200ms,dupthresh=3…")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="seed of the channel's random loss and jitter")
@model_option
@click.option("--context", "context_file", default=None, help="UTF-8 text file to prefill (default: embedded prose)")
@click.option("--question", default=None, help="question the receiver asks (default: embedded)")
@click.option("--tokens", type=click.IntRange(min=16, max=131072), default=None, help="cut or repeat the context to N tokens")
@click.option("--pipeline", "pipelines", multiple=True, help="pipeline spec (repeatable; default: a standard set)")
@click.option("--pipeline-file", type=click.Path(dir_okay=False), default=None, help="file with one spec per line (# comments)")
@click.option("--max-new-tokens", type=click.IntRange(1, 512), default=24, show_default=True)
@click.option("--stream", is_flag=True, help="also stream each pipeline in chunks of layers (decode and prefill overlap arrival)")
@click.option("--layers-per-chunk", type=click.IntRange(1, 4096), default=None,
              help=f"layers per chunk (implies --stream; default {DEFAULT_LAYERS_PER_CHUNK})")
@click.option("--target-ttft", "target_text", default=None, help="TTFT target (200ms, 1s): which rows meet it; the adaptive stream aims at it")
@click.option("--levels", "levels_text", default=None,
              help="adaptive stream: levels, best first (int8,int4:axis=channel,int3:axis=channel); needs --target-ttft")
@click.option("--initial-estimate", default=None, help="adaptive sender's first bandwidth estimate (default: the link's nominal goodput)")
@click.option("--encode-ahead", is_flag=True, help="the sender holds its payloads encoded before the request (encode not counted)")
@click.option("--profile", "profile_path", default=None, type=click.Path(dir_okay=False),
              help="receiver profile JSON (kvcodec profile); default: this machine, measured in this run")
@click.option("--timeline", "timeline_path", default=None, type=click.Path(dir_okay=False), help="write the timelines (JSON) here")
@click.option("--timeline-plot", "plot_path", default=None, type=click.Path(dir_okay=False), help="write the timeline plot (PNG) here")
@click.option("--progressive", "progressive", default=None,
              help="also send a progressive stream (e.g. prog8:axis=channel): a row per fixed prefix and per --policy")
@click.option("--policy", "policies", multiple=True,
              help="with --progressive: adaptive policy p1>=THRESHOLD,start=PLANES (repeatable; default p1>=0.5,start=3)")
@click.option("--planes-per-message", default="1", show_default=True,
              help="with --progressive: planes per message, N or a schedule like 3+1+1+1+1+1")
@click.option("--sweep-bandwidth", default=None, help="LOW..HIGH: TTFT over log-spaced bandwidths, e.g. 10Mbps..10Gbps")
@click.option("--sweep-loss", default=None, help="LOW..HIGH: goodput and TTFT over loss rates (both directions), e.g. 0..20%")
@click.option("--sweep-points", type=click.IntRange(1, 1000), default=None,
              help="points of a sweep (default: 13 bandwidths, 9 loss rates)")
@device_option
@dtype_option
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def simulate(link_spec, latency, mtu, header_bytes, arq_text, seed, model, context_file, question, tokens, pipelines,
             pipeline_file, max_new_tokens, stream, layers_per_chunk, target_text, levels_text, initial_estimate,
             encode_ahead, profile_path, timeline_path, plot_path, progressive, policies, planes_per_message,
             sweep_bandwidth, sweep_loss, sweep_points, device, dtype, as_json):
    """Prefill a real model, encode its KV cache with each pipeline, send it over a
    simulated channel, and compare TTFT with sending text and recomputing; optionally
    stream it in chunks, adapt each chunk's level to a TTFT target, send a progressive stream
    whose receiver asks for more bit planes only when unsure, and sweep bandwidth or loss."""
    from kvcodec.simulate import DEFAULT_PIPELINES, Options, prepare, profile_levels, report

    channel = _channel(link_spec, latency, mtu, header_bytes)
    arq = _arq(arq_text)
    specs = list(pipelines)
    if pipeline_file:
        specs += [l.split("#", 1)[0].strip() for l in _text_file(pipeline_file).splitlines()]
        specs = [s for s in specs if s]
    parsed = _pipelines(tuple(specs) or DEFAULT_PIPELINES)
    target = _duration("--target-ttft", target_text) if target_text is not None else None
    levels = _split_levels(levels_text) if levels_text is not None else []
    if levels and target is None:
        raise InputError("--levels needs --target-ttft (the adaptive sender aims at it)")
    if layers_per_chunk is None and (stream or levels):
        layers_per_chunk = DEFAULT_LAYERS_PER_CHUNK
    initial = _bandwidth("--initial-estimate", initial_estimate) if initial_estimate is not None else None
    if (policies or planes_per_message.strip() != "1") and progressive is None:
        raise InputError("--policy and --planes-per-message need --progressive")
    prog_spec, prog_policies, schedule = None, [], 1
    if progressive is not None:
        from kvcodec.progressive import stream_bits

        prog_spec = _pipelines((progressive,))[0]
        stream_bits(prog_spec)  # not a progressive stream: one-line error before the model loads
        prog_policies, schedule = _policies(policies), _plane_schedule(planes_per_message)
    sweep = _sweep_args(channel, sweep_bandwidth, sweep_loss, sweep_points)
    if sweep and (timeline_path or plot_path):
        raise InputError("--timeline and --timeline-plot describe one channel; leave them out of a sweep")
    for path in (timeline_path, plot_path):
        if path:
            _check_output_path(path)
    profile = None
    if profile_path:
        profile = _load_profile(profile_path, profile_levels(parsed, levels))
    context = _text_file(context_file, "default_context.txt")
    if not context.strip():
        raise InputError(f"context file {context_file} is empty")
    question = question or _read_default("default_question.txt")
    lm = _load(model, device, dtype)
    _check_against_model(lm, parsed + levels, tokens)
    if profile is not None:
        _check_profile_model(profile, profile_path, lm)
    options = Options(arq=arq, seed=seed, target_s=target, encode_ahead=encode_ahead, initial_bps=initial)
    with err_console.status("running…") as status:
        prep = prepare(lm, context, question, parsed, tokens=tokens, max_new_tokens=max_new_tokens,
                       layers_per_chunk=layers_per_chunk, levels=levels, profile=profile,
                       profile_source=profile_path or "", answers=sweep is None, on_step=status.update,
                       progressive=prog_spec, policies=prog_policies, planes_per_message=schedule)
        if sweep is not None:
            points = _run_sweep(prep, channel, sweep, options, status)
        else:
            status.update("simulating the channel")
            result = _sim_errors(report, prep, channel, options, layers_per_chunk)
    if sweep is not None:
        if as_json:
            click.echo(json.dumps(_sweep_json(prep, channel, sweep, options, points), indent=2))
        else:
            _print_sweep(prep, channel, sweep, options, points)
        return
    if timeline_path:
        _write_text(timeline_path, json.dumps(result.timeline_json(), indent=1) + "\n")
    if plot_path:
        from kvcodec.simulate import plot_timelines

        title = (f"{result.model} · {result.context_tokens} tokens · {result.channel.describe()} · "
                 f"receiver: {result.receiver_source}")
        plot_timelines(result.timelines, plot_path, title, target)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    _print_report(result)
    for path, what in ((timeline_path, "timelines"), (plot_path, "timeline plot")):
        if path:
            click.echo(f"wrote the {what} to {path}")


def _sim_errors(fn, *args, **kw):
    """Run a simulation; a transfer the ARQ gives up on is a one-line error (exit 2)."""
    from kvcodec_sim import TransferAborted

    try:
        return fn(*args, **kw)
    except TransferAborted as exc:
        raise InputError(f"the channel lost too much: {exc}") from None


def _channel(spec: str, latency: str, mtu: str, header_bytes: str):
    """The --link channel (a plain bandwidth is a lossless link)."""
    from kvcodec_sim import Channel, LinkSpecError

    try:
        return Channel.parse(spec, latency=latency, mtu=mtu, header_bytes=header_bytes)
    except (LinkSpecError, ValueError, TypeError) as exc:
        raise InputError(str(exc).splitlines()[0]) from None


def _arq(text: str):
    from kvcodec_sim import ArqConfig, LinkSpecError

    try:
        return ArqConfig.parse(text) if text.strip() else None
    except (LinkSpecError, TypeError) as exc:
        raise InputError(f"--arq: {str(exc).splitlines()[0]}") from None


def _duration(option: str, text: str) -> float:
    from kvcodec_sim import LinkSpecError, parse_duration

    try:
        value = parse_duration(text)
    except (LinkSpecError, TypeError) as exc:
        raise InputError(f"{option}: {str(exc).splitlines()[0]}") from None
    if value <= 0:
        raise InputError(f"{option} must be longer than 0 s, got {text!r}")
    return value


def _bandwidth(option: str, text: str) -> float:
    from kvcodec_sim import LinkSpecError, parse_bandwidth

    try:
        return parse_bandwidth(text)
    except (LinkSpecError, TypeError) as exc:
        raise InputError(f"{option}: {str(exc).splitlines()[0]}") from None


def _split_levels(text: str) -> list:
    """Pipelines of a --levels list, best first. Items are separated by ``;`` if there is
    one, else by commas — a comma followed by something that is not a spec on its own
    (``group=32``) continues the previous spec: ``int4:axis=channel,group=32,int8``."""
    from kvcodec.api import as_pipeline

    def valid(spec: str) -> bool:
        try:
            as_pipeline(spec.strip())
            return True
        except SpecError:
            return False

    items = text.split(";") if ";" in text else text.split(",")
    specs: list[str] = []
    for item in items:
        if specs and ";" not in text and not valid(item) and valid(specs[-1] + "," + item):
            specs[-1] += "," + item
        else:
            specs.append(item)
    specs = [s.strip() for s in specs]
    if not specs or not all(specs):
        raise InputError(f"--levels {text!r}: empty level; give specs best first, e.g. int8,int4:axis=channel,int3:axis=channel")
    parsed = _pipelines(tuple(specs))
    names = [p.describe() for p in parsed]
    if len(set(names)) != len(names):
        raise InputError(f"--levels {text!r}: a level appears twice")
    return parsed


def _sweep_args(channel, bandwidth_text: str | None, loss_text: str | None, points: int | None):
    """``("bandwidth" | "loss", [values])`` of a sweep, or ``None``."""
    from kvcodec.simulate import lin_points, log_points
    from kvcodec_sim import LinkSpecError, parse_probability

    if bandwidth_text and loss_text:
        raise InputError("give one sweep at a time: --sweep-bandwidth or --sweep-loss")
    if points is not None and not (bandwidth_text or loss_text):
        raise InputError("--sweep-points needs --sweep-bandwidth or --sweep-loss")
    if bandwidth_text:
        if channel.trace is not None:
            raise InputError("--sweep-bandwidth replaces the link's bandwidth; a trace= sets it instead")
        low, high = _range("--sweep-bandwidth", bandwidth_text, lambda t: _bandwidth("--sweep-bandwidth", t))
        return "bandwidth", log_points(low, high, points or 13)
    if loss_text:
        def probability(t: str) -> float:
            try:
                p = parse_probability(t)
            except (LinkSpecError, TypeError) as exc:
                raise InputError(f"--sweep-loss: {str(exc).splitlines()[0]}") from None
            if p >= 1:
                raise InputError(f"--sweep-loss: a loss rate must be below 100%, got {t!r}")
            return p

        low, high = _range("--sweep-loss", loss_text, probability)
        return "loss", lin_points(low, high, points or 9)
    return None


def _range(option: str, text: str, parse) -> tuple[float, float]:
    low, sep, high = text.partition("..")
    if not sep or not low.strip() or not high.strip():
        raise InputError(f"{option} {text!r}: expected LOW..HIGH, e.g. 10Mbps..10Gbps or 0..20%")
    lo, hi = parse(low.strip()), parse(high.strip())
    if hi < lo:
        raise InputError(f"{option} {text!r}: LOW is above HIGH")
    return lo, hi


def _load_profile(path: str, levels: list[str]):
    from kvcodec_sim.receiver import ProfileError, ReceiverProfile

    try:
        profile = ReceiverProfile.load(path)
    except ProfileError as exc:
        raise InputError(str(exc)) from None
    missing = [level for level in levels if not profile.has_level(level)]
    if missing:
        have = ", ".join(profile.codecs) or "none"
        raise InputError(f"profile {path} has no codec timing for {', '.join(map(repr, missing))} (it has: {have}); "
                         f"add them with kvcodec profile --level …")
    return profile


def _check_profile_model(profile, path: str, lm) -> None:
    layers = lm.model.config.get_text_config().num_hidden_layers
    if profile.model != lm.name or profile.layers != layers:
        raise InputError(f"profile {path} was measured with {profile.model} ({profile.layers} layers), "
                         f"not {lm.name} ({layers} layers)")


def _write_text(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None


def _run_sweep(prep, channel, sweep, options, status):
    from kvcodec.simulate import sweep as run_sweep
    from kvcodec.simulate import with_bandwidth, with_loss

    kind, values = sweep
    channels = [(v, with_bandwidth(channel, v) if kind == "bandwidth" else with_loss(channel, v)) for v in values]
    status.update(f"sweeping {kind}: 0/{len(values)}")
    return _sim_errors(run_sweep, prep, channels, options,
                       on_point=lambda i: status.update(f"sweeping {kind}: {i}/{len(values)}"))


def _sweep_columns(prep, points) -> list[str]:
    names = [r.pipeline for r in points[0].rows]
    return names + (["adaptive"] if points[0].adaptive is not None else [])


def _sweep_json(prep, channel, sweep, options, points) -> dict:
    kind, values = sweep
    return {
        "model": prep.model,
        "context_tokens": prep.context_tokens,
        "receiver": prep.receiver_source,
        "channel": channel.describe(),
        "sweep": kind,
        "seed": options.seed,
        "encode_ahead": options.encode_ahead,
        "target_ttft_s": options.target_s,
        "layers_per_chunk": prep.ranges[0][1] if prep.ranges else None,
        "points": [p.to_json() for p in points],
    }


def _fmt_x(kind: str, x: float) -> str:
    if kind == "loss":
        return f"{x * 100:.3g} %"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if x >= scale * 0.9995:  # log-spaced points land a hair below round values
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} bit/s"


def _row_ttft(r) -> float:
    return r.stream_ttft_s if r.stream_ttft_s is not None else r.ttft_s


def _print_sweep(prep, channel, sweep, options, points) -> None:
    console = _wide_console()
    kind, _ = sweep
    streamed = prep.ranges is not None
    base = (f"{prep.model} · {prep.context_tokens} context tokens · receiver: {prep.receiver_source} · "
            f"{'streamed in chunks of ' + str(prep.ranges[0][1]) + ' layers · ' if streamed else ''}"
            f"{'encode ahead · ' if options.encode_ahead else ''}seed {options.seed}")
    names = [r.pipeline for r in points[0].rows]
    ttft = Table(title=f"TTFT ms over {kind} · {base}", title_justify="left")
    ttft.add_column(kind)
    for name in names:
        ttft.add_column(name + (" (stream)" if streamed and name != "text + recompute" else ""), justify="right")
    if points[0].adaptive is not None:
        ttft.add_column(f"adaptive (target {options.target_s * 1e3:g} ms)", justify="right")
        ttft.add_column("hindsight", justify="right")
    for p in points:
        cells = [_fmt_x(kind, p.x)] + [f"{_row_ttft(r) * 1e3:,.0f}" for r in p.rows]
        if p.adaptive is not None:
            a = p.adaptive
            mark = "" if a.met else " ✗"
            what = "text" if a.mode == "text" else "/".join(sorted(set(a.level_names()), key=a.level_names().index))
            cells.append(f"{a.ttft_s * 1e3:,.0f}{mark} ({what})")
            h = a.hindsight.best if a.hindsight else None
            cells.append("—" if h is None else f"{h.ttft_s * 1e3:,.0f}{'' if h.met else ' ✗'}")
        ttft.add_row(*cells)
    console.print(ttft)
    if kind == "loss":
        good = Table(title=f"goodput Mbit/s / retransmissions of one payload over loss · {channel.describe().split(';')[0]}",
                     title_justify="left")
        good.add_column("loss")
        for name in names:
            good.add_column(name, justify="right")
        for p in points:
            good.add_row(_fmt_x(kind, p.x), *[f"{r.goodput_bps / 1e6:,.1f} / {r.retransmissions:,}" for r in p.rows])
        console.print(good)
    console.print(
        f"Channel: {channel.describe()} ({'bandwidth' if kind == 'bandwidth' else 'loss in both directions'} "
        f"replaced at each point). TTFT counts {'' if options.encode_ahead else 'the sender encode, '}delivery, decode "
        f"and the question prefill (text row: the prefill from text)"
        f"{'; KV rows streamed (specs/streaming.md §4)' if streamed else ''}. ✗: misses the target."
    )


@cli.command()
@model_option
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="profile JSON to write")
@click.option("--tokens", "tokens_text", default=",".join(map(str, (128, 256, 512, 1024, 2048, 4096))),
              show_default=True, help="context lengths to measure: a comma list")
@click.option("--level", "levels", multiple=True, help="codec level (pipeline spec) to time (repeatable; default: a standard set)")
@click.option("--repeats", type=click.IntRange(1, 100), default=3, show_default=True, help="runs per measurement (median)")
@click.option("--context", "context_file", default=None, help="UTF-8 text file to prefill (default: embedded prose)")
@click.option("--question", default=None, help="question the receiver asks (default: embedded)")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads for torch (default: torch's choice)")
@device_option
@dtype_option
def profile(model, out_path, tokens_text, levels, repeats, context_file, question, threads, device, dtype):
    """Measure this machine as a receiver (prefill from text, question prefill per layer on
    a received cache, codec encode/decode) and write the profile JSON that
    `kvcodec simulate --profile` reads."""
    from kvcodec.profile import PROFILE_LEVELS, measure_profile, write_profile

    grid = _token_grid(tokens_text)
    parsed = _pipelines(levels or PROFILE_LEVELS)
    _check_output_path(out_path)
    context = _text_file(context_file, "default_context.txt")
    if not context.strip():
        raise InputError(f"context file {context_file} is empty")
    question = question or _read_default("default_question.txt")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    lm = _load(model, device, dtype)
    _check_against_model(lm, parsed, max(grid))
    with err_console.status("profiling…") as status:
        data = measure_profile(lm, tokens=grid, levels=[p.describe() for p in parsed], repeats=repeats,
                               context=context, question=question, on_step=status.update)
    write_profile(data, out_path)
    click.echo(f"wrote {out_path}: {data['model']} on {data['device_name']}, {len(grid)} points, "
               f"{len(data['codecs'])} levels")


def _token_grid(text: str) -> list[int]:
    try:
        grid = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise InputError(f"--tokens {text!r}: expected a comma list of whole numbers, e.g. 128,512,2048") from None
    if not grid or grid[0] < 16:
        raise InputError(f"--tokens {text!r}: every length must be at least 16 tokens")
    return grid


def _check_output_path(path: str) -> None:
    """Reject an output path that is a folder or whose folder does not exist (exit 2)."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"output path {path} is a folder")
    if not target.parent.is_dir():
        raise InputError(f"cannot write {path}: folder {target.parent} does not exist")


def _wide_console() -> Console:
    """A console for tables: the terminal's width, or 160 columns when output is not a terminal."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _print_report(report) -> None:
    console = _wide_console()
    link, channel = report.link, report.channel
    lossy = not channel.is_lossless or channel.jitter.mean_s > 0 or channel.trace is not None
    streamed = report.layers_per_chunk is not None
    target = report.options.target_s
    title = (
        f"{report.model} · {report.context_tokens} context tokens · {report.dtype} on {report.device} · "
        f"link {link.bandwidth_bps / 1e6:g} Mbit/s, {link.latency_s * 1e3:g} ms, MTU {link.mtu_bytes} B, "
        f"{link.header_bytes} B/packet header"
    )
    table = Table(title=title, title_justify="left")
    columns = ["pipeline", "bytes", "× FP16", "bits/elem", "rel. error", "encode ms", "decode ms", "transfer ms"]
    if lossy:
        columns += ["goodput Mbit/s", "retx"]
    columns += ["receiver ms", "TTFT ms"]
    if streamed:
        columns += ["stream TTFT ms"]
    if target is not None:
        columns += [f"≤ {target * 1e3:g} ms"]
    columns += ["same answer"]
    for col in columns:
        table.add_column(col, justify="left" if col == "pipeline" else "right")
    for r in report.rows:
        cells = [
            r.pipeline,
            f"{r.bytes:,}",
            f"{r.ratio_fp16:.3f}",
            f"{r.bits_per_element:.3f}",
            "—" if r.rel_error is None else f"{r.rel_error:.4f}",
            f"{r.encode_s * 1e3:.0f}",
            f"{r.decode_s * 1e3:.0f}",
            f"{r.transfer_s * 1e3:.1f}",
        ]
        if lossy:
            cells += [f"{r.goodput_bps / 1e6:.1f}", f"{r.retransmissions:,}"]
        cells += [f"{r.receiver_s * 1e3:.0f}", f"{r.ttft_s * 1e3:.0f}"]
        if streamed:
            cells += ["—" if r.stream_ttft_s is None else f"{r.stream_ttft_s * 1e3:.0f}"]
        if target is not None:
            cells += ["yes" if r.met_target else "no"]
        cells += ["yes" if r.same_answer else "no"]
        table.add_row(*cells)
    console.print(table)
    if report.receiver_source == "measured in this run":
        receiver = f"this machine ({report.device}, {report.dtype}), measured in this run"
    else:
        receiver = f"profile {report.receiver_source}"
    console.print(
        f"Channel: {channel.describe()}; seed {report.options.seed}. Receiver compute model: {receiver}: "
        f"question prefill on a received cache {report.prefill_question_s * 1e3:.0f} ms; prefill of context + "
        f"question from text {report.prefill_full_s * 1e3:.0f} ms. TTFT = "
        f"{'' if report.options.encode_ahead else 'encode + '}transfer + decode + receiver; transfer = in-order "
        f"delivery of len(payload) bytes (payload + {link.header_bytes} B per packet, "
        f"+ {link.latency_s * 1e3:g} ms propagation; selective-repeat ARQ when packets can be lost)."
        + (f" Stream TTFT: chunks of {report.layers_per_chunk} layers, decode and prefill of each chunk as it "
           f"arrives (specs/streaming.md §4)." if streamed else "")
    )
    if report.adaptive is not None:
        _print_adaptive(console, report.adaptive)
    console.print(f"Question: {report.question}")
    console.print(f"Answer from the uncompressed cache: {report.reference_answer!r}")
    for r in report.rows:
        if not r.same_answer:
            console.print(f"  {r.pipeline}: {r.answer!r}")


def _print_adaptive(console, a) -> None:
    plan = a.plan
    names = [lv.name for lv in plan.levels]
    table = Table(title=f"Adaptive stream · levels best first: {' > '.join(names)} · target {plan.target_s * 1e3:g} ms"
                        f" · sender ready at {plan.start_s * 1e3:.0f} ms", title_justify="left")
    for col in ["chunk", "layers", "decided ms", "estimate Mbit/s"] + [f"pred. {n} ms" for n in names] + ["chosen"]:
        table.add_column(col, justify="left" if col in ("chunk", "chosen") else "right")
    for d in a.decisions:
        first, count = plan.first_layers[d.chunk], plan.layer_counts[d.chunk]
        table.add_row(str(d.chunk), f"{first}–{first + count - 1}", f"{d.time_s * 1e3:.0f}", f"{d.estimate_bps / 1e6:.1f}",
                      *[f"{p * 1e3:.0f}" for p in d.predicted_s],
                      names[d.level] + ("" if d.feasible else " (none feasible)"))
    console.print(table)
    verdict = "met" if a.met else "MISSED"
    chosen = "text + recompute" if a.mode == "text" else ", ".join(a.level_names())
    text = "" if a.predicted_text_s is None else f", text + recompute {a.predicted_text_s * 1e3:.0f} ms"
    console.print(f"Adaptive: predicted at the start: stream {a.predicted_kv_s * 1e3:.0f} ms{text} → sent {chosen}; "
                  f"TTFT {a.ttft_s * 1e3:.0f} ms, target {verdict}.")
    if a.hindsight is not None:
        h = a.hindsight.best
        what = "text + recompute" if h.mode == "text" else ", ".join(a.level_names(h))
        console.print(f"Hindsight optimum ({a.hindsight.method}, {a.hindsight.candidates} candidates, same channel "
                      f"and seed): {what}; TTFT {h.ttft_s * 1e3:.0f} ms, target {'met' if h.met else 'missed'}; "
                      f"quality score {h.score:.2f} vs the controller's {a.choice.score:.2f} (mean level rank by "
                      f"layers, 0 = best level, −1 = text).")


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
        if not eq or key not in task.options or key in task.hidden_options:
            known = ", ".join(f"{k}={v!r}" for k, v in task.options.items() if k not in task.hidden_options) or "none"
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
              lm=None, show=True, samples_per_batch=1):
    """Evaluate ``specs`` (loading the model unless ``lm`` is given); print the summary table
    (when ``show``) and return the loaded model and the summaries of this run's samples."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kvcodec.harness import Settings, evaluate
    from kvcodec.report import summarize
    from kvcodec.results import FULL, ResultsFile, ResultsError, options_key
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
    length = task.canonical_options(opts).get("length") if task.name == "needle" else None
    _check_against_model(lm, pipelines, tokens=length, what="needle length")
    if workers is None:
        workers = min(8, (os.cpu_count() or 1) - 1) if lm.device.type == "cuda" else 0
    load_opts = dict(opts)
    if task.name == "needle":
        load_opts["count_tokens"] = lambda text: len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    try:
        samples = task.load(data, n=n, seed=seed, **load_opts)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    _check_prompt_lengths(lm, task, samples, max_new_tokens)
    if shard_of is not None:
        samples = samples[shard_of[0] :: shard_of[1]]
    if processes > 1:
        child_args = dict(model=model or lm.name, task=task.name, n=n, seed=seed, data_dir=str(data), options=options,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, device=str(lm.device),
                          dtype=str(lm.dtype).replace("torch.", ""), samples_per_batch=samples_per_batch)
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

            samples_seen = [0]

            def on_sample(done, new):
                samples_seen[0] += 1  # called once per sample that needed work
                elapsed = max(time.perf_counter() - started, 1e-9)
                progress.update(bar, advance=new, rate=f"{samples_seen[0] / elapsed:.2f} samples/s · "
                                                       f"{done / elapsed:.2f} results/s")

            stats = evaluate(
                lm, task, samples, pipelines, results, task_options=opts,
                settings=Settings(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, workers=workers,
                                  samples_per_batch=samples_per_batch),
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
    opts_key = options_key({"task": task.name, "task_options": opts})
    mine = [r for r in results.records if r["model_sha256"] == lm.sha256 and r["task"] == task.name
            and r["sample_id"] in ids and r["pipeline"] in wanted and options_key(r) == opts_key
            and r["dtype"] == str(lm.dtype).replace("torch.", "")]
    rows = summarize(mine)
    if show:
        _wide_console().print(_summary_table(rows, f"{lm.name} · {task.name} {opts or ''} · n={len(samples)}"))
    return lm, rows


def _check_prompt_lengths(lm, task, samples, max_new_tokens: int) -> None:
    """Before any prefill: every sample's context + question tokens, plus the tokens to
    generate, must fit the model's context (``max_position_embeddings``); InputError naming
    the longest sample otherwise."""
    from kvcodec.prompts import task_prompt

    limit = getattr(lm.model.config.get_text_config(), "max_position_embeddings", None)
    if not limit or not samples:
        return
    longest, sample = max((len(p.context_ids) + len(p.question_ids), s.id)
                          for s in samples for p in [task_prompt(lm.tokenizer, task, s, chat=lm.chat)])
    if longest + max_new_tokens > limit:
        raise InputError(f"sample {sample}: {longest} prompt tokens + {max_new_tokens} to generate exceed "
                         f"{lm.name}'s context of {limit} tokens")


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
                   "--shard", f"{i}/{processes}", "--samples-per-batch", str(args.get("samples_per_batch", 1))]
            for opt in args["options"]:
                cmd += ["--option", opt]
            log = open(tmp / f"shard-{i}.log", "w", encoding="utf-8")
            logs.append(log)
            children.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        base = len(results.records)
        started = time.perf_counter()
        # an interrupted run (Ctrl-C, or SIGTERM from `timeout` or a scheduler) stops the
        # children and still keeps every record they finished, so a rerun resumes
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            _watch(children, shards, base, total, label, processes)
        except BaseException:
            for c in children:
                if c.poll() is None:
                    c.terminate()
            for c in children:
                c.wait()
            _keep_new(results, shards)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            for log in logs:
                log.close()
        seconds = time.perf_counter() - started
        failed = [i for i, c in enumerate(children) if c.returncode != 0]
        # keep what finished even if a child failed, so a rerun resumes
        unique = _keep_new(results, shards)
        if failed:
            tail = (tmp / f"shard-{failed[0]}.log").read_text(encoding="utf-8").strip().splitlines()[-1:]
            raise ModelError(f"eval process {failed[0]} of {processes} failed: {tail[0] if tail else 'no output'}")
    err_console.print(
        f"{len(unique)} new results in {seconds:.1f} s from {processes} processes with {workers} codec workers each: "
        f"{len(unique) / max(seconds, 1e-9):.2f} sample×pipeline results per second on {device}"
    )


def _raise_interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def _watch(children, shards: list[Path], base: int, total: int, label: str, processes: int) -> None:
    """Show the children's progress (their shards' new lines) until all have exited."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err_console) as progress:
        bar = progress.add_task(f"{label} · {processes} processes", total=total, rate="")
        while any(c.poll() is None for c in children):
            time.sleep(1.0)
            done = sum(max(_count_lines(sh) - base, 0) for sh in shards)
            rate = done / max(time.perf_counter() - started, 1e-9)
            progress.update(bar, completed=min(done, total), rate=f"{rate:.2f} results/s")


def _keep_new(results, shards: list[Path]) -> list[dict]:
    """Append to ``results`` the shards' records it lacks (a child killed mid-line leaves
    a partial last line, which is dropped); return them."""
    from kvcodec.results import read_records, record_key

    new = [r for r in read_records(shards, partial_tail=True) if results.get(record_key(r)) is None]
    unique = list({record_key(r): r for r in new}.values())
    results.append(unique)
    return unique


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
    click.option("--samples-per-batch", type=click.IntRange(1, 64), default=1, show_default=True,
                 help="samples whose pipelines decode together, padded into shared batches of --batch-size rows "
                      "(generation tasks; more keeps a launch-bound GPU busier)"),
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
def eval_command(pipelines, pipeline_file, model, task, n, seed, data_dir, results_path, options, max_new_tokens, batch_size, workers, processes, shard, device, dtype,
                 samples_per_batch):
    """Measure answer quality against transmitted bytes: each pipeline's real payload, decoded,
    answers the task's questions; the table gives % of full with a 95 % paired bootstrap CI."""
    specs = list(pipelines)
    if pipeline_file:
        specs += [l.split("#", 1)[0].strip() for l in _text_file(pipeline_file).splitlines()]
        specs = [s for s in specs if s]
    if not specs:
        raise InputError("give at least one --pipeline or a --pipeline-file")
    _run_eval(model, task, specs, n, seed, data_dir, results_path, options, max_new_tokens, batch_size, workers, processes, shard, device, dtype,
              samples_per_batch=samples_per_batch)


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
        if hi and int(hi) < int(lo):
            raise InputError(f"the range {part.strip()!r} in {text!r} runs backwards; write {hi.strip()}-{lo.strip()}")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


@cli.command()
@click.option("--bits", default="2,3,4,5,6,8", show_default=True, help="widths: 2,3,4 or 2-8")
@click.option("--axis", "axes", default="token,channel", show_default=True, help="token, channel, or token,channel for both")
@click.option("--target", "targets", default="kv", show_default=True, help="kv (both), k (keys only), v (values only); comma list")
@click.option("--protect", default="none", show_default=True, help="layers kept at full precision: none, 0, 0-1; comma list of choices separated by ';'")
@click.option("--layerwise", type=click.IntRange(min=1), default=None, help="also one layer at a time quantized, the rest full precision (give the layer count)")
@_with(eval_options)
def sweep(bits, axes, targets, protect, layerwise, model, task, n, seed, data_dir, results_path, options, max_new_tokens, batch_size, workers, processes, shard, device, dtype,
          samples_per_batch):
    """Evaluate a grid: bit widths × axes × keys/values × protected layers (× layer-wise)."""
    axes_l = [a.strip() for a in axes.split(",")]
    targets_l = [t.strip() for t in targets.split(",")]
    if any(a not in ("token", "channel") for a in axes_l) or any(t not in ("kv", "k", "v") for t in targets_l):
        raise InputError("--axis takes token,channel and --target takes kv,k,v")
    specs = ["fp16"] + sweep_specs(_int_list(bits), axes_l, targets_l, [p.strip() for p in protect.split(";")], layerwise)
    err_console.print(f"sweep: {len(specs)} pipelines")
    _run_eval(model, task, specs, n, seed, data_dir, results_path, options, max_new_tokens, batch_size, workers, processes, shard, device, dtype,
              samples_per_batch=samples_per_batch)


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
             results_path, options, max_new_tokens, batch_size, workers, processes, shard, device, dtype, samples_per_batch):
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
    lm, rows = _run_eval(*args, lm=lm, show=False, samples_per_batch=samples_per_batch)
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
    _, verify = _run_eval(*args[:2], [stage, diagnosis.recipe], *args[3:], lm=lm, show=True,
                          samples_per_batch=samples_per_batch)
    by_name = {r.pipeline: r for r in verify}
    mine = by_name.get(_pipelines((diagnosis.recipe,))[0].describe())
    if mine is not None:
        click.echo(
            f"verified: {mine.pipeline}: {mine.percent:.1f} % of full [{mine.low:.1f}, {mine.high:.1f}], "
            f"ΔNLL {mine.delta_nll if mine.delta_nll is not None else float('nan'):+.3f}, {mine.bytes:,.0f} bytes "
            f"({mine.ratio_fp16:.3f} × FP16, {mine.bits_per_element:.2f} bits/element)"
        )


def _policies(texts) -> list:
    """--policy values (default ``p1>=0.5,start=3``) as :class:`kvcodec.adaptive.Policy`."""
    from kvcodec.adaptive import Policy

    try:
        return [Policy.parse(p) for p in (texts or ("p1>=0.5,start=3",))]
    except (ValueError, TypeError) as exc:
        raise InputError(f"--policy: {exc}") from None


def _plane_schedule(text: str):
    """--planes-per-message: N, or a schedule N+N+…"""
    parts = text.strip().split("+")
    if not all(part.isdigit() and int(part) > 0 for part in parts):
        raise InputError(f"--planes-per-message takes N or N+N+…, got {text!r}")
    return int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]


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
    from kvcodec.adaptive import evaluate_adaptive, stream_label
    from kvcodec.progressive import stream_bits
    from kvcodec.harness import Settings
    from kvcodec.report import summarize
    from kvcodec.results import FULL, ResultsError, ResultsFile, options_key
    from kvcodec.tasks import get_task, resolve_data_dir

    parsed_policies = _policies(policies)
    schedule = _plane_schedule(planes_per_message)
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
    length = task_obj.canonical_options(opts).get("length") if task_obj.name == "needle" else None
    _check_against_model(lm, _pipelines(tuple(stream_specs)), tokens=length, what="needle length")
    load_opts = dict(opts)
    if task_obj.name == "needle":
        load_opts["count_tokens"] = lambda t: len(lm.tokenizer(t, add_special_tokens=False)["input_ids"])
    try:
        samples = task_obj.load(data, n=n, seed=seed, **load_opts)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    _check_prompt_lengths(lm, task_obj, samples, max_new_tokens)
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
    opts_key = options_key({"task": task_obj.name, "task_options": opts})
    mine = [r for r in results.records if r["model_sha256"] == lm.sha256 and r["task"] == task_obj.name
            and r["sample_id"] in ids and r["pipeline"] in names and options_key(r) == opts_key
            and r["dtype"] == str(lm.dtype).replace("torch.", "")]
    _wide_console().print(_summary_table(summarize(mine), f"{lm.name} · {task_obj.name} · progressive · n={len(samples)}"))


@cli.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--markdown", "md_path", default=None, type=click.Path(dir_okay=False), help="write the table here")
@click.option("--plot", "png_path", default=None, type=click.Path(dir_okay=False), help="write the rate–accuracy PNG here")
@click.option("--damage-map", "damage_path", default=None, type=click.Path(dir_okay=False),
              help="write the layer-wise damage map (heat map of one-layer-at-a-time pipelines) PNG here")
@click.option("--by-option", "by_option", default=None, type=(str, click.Path(dir_okay=False)),
              help="OPTION PNG: plot % of full against a numeric task option (e.g. length needle.png)")
@click.option("--frontier", "frontier_path", default=None, type=click.Path(dir_okay=False),
              help="write the rate–accuracy frontier PNG here and add the frontier section to the markdown and "
                   "stdout: the cheapest pipeline reaching 95 % and 99 % of full, and the Pareto set")
def report(results, md_path, png_path, damage_path, by_option, frontier_path):
    """Summarize results files: a markdown table (with a layer-wise damage map when the results
    hold one-layer-at-a-time pipelines, and the rate–accuracy frontier with --frontier) and plots."""
    from kvcodec.report import (
        damage_markdown, damage_plot, frontier, frontier_markdown, frontier_plot, layer_damage, markdown,
        option_plot, option_series, plot, summarize,
    )
    from kvcodec.results import ResultsError, read_records

    missing = [r for r in results if not Path(r).is_file()]
    if missing:
        raise InputError(f"no such results file: {missing[0]}")
    _check_outputs(("--markdown", md_path, False), ("--plot", png_path, True), ("--damage-map", damage_path, True),
                   ("--frontier", frontier_path, True), ("--by-option", by_option[1] if by_option else None, True))
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
    if frontier_path:
        if not frontier(rows):
            raise InputError("--frontier: the results hold no pipeline besides the full baseline")
        text += "\n## Rate–accuracy frontier\n\n" + frontier_markdown(rows)
    if by_option:
        try:
            option_series(rows, by_option[0])  # checked before anything is written
        except ValueError as exc:
            raise InputError(f"--by-option: {exc}") from None
    if md_path:
        Path(md_path).write_text(text, encoding="utf-8")
    if png_path:
        plot(rows, png_path)
    if damage_path:
        damage_plot(cells, damage_path)
    if frontier_path:
        frontier_plot(rows, frontier_path)
    if by_option:
        option_plot(rows, by_option[0], by_option[1])
    click.echo(text)


def _figure_suffixes() -> tuple[str, ...]:
    """The file types matplotlib writes (.png, .pdf, .svg, .jpg, …), as name suffixes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return tuple(sorted("." + k for k in Figure().canvas.get_supported_filetypes()))


def _check_outputs(*outputs: tuple[str, str | None, bool]) -> None:
    """Before anything is written: each ``(option, path, figure)`` with a path must name a
    file in an existing folder, and a figure a file type matplotlib writes (InputError
    otherwise)."""
    for option, path, figure in outputs:
        if not path:
            continue
        suffixes = _figure_suffixes() if figure else None
        target = Path(path)
        if not target.parent.is_dir():
            raise InputError(f"{option}: no such folder for {path!r}")
        if target.is_dir():
            raise InputError(f"{option}: {path!r} is a folder")
        if suffixes and target.suffix.lower() not in suffixes:
            raise InputError(f"{option}: {path!r} must end in a figure type: {', '.join(suffixes)}")


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
