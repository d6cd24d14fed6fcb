"""The main job: a real model's KV cache through each pipeline and over a simulated channel.

For every pipeline: encode the real cache, send ``len(payload)`` bytes over the channel
(:mod:`kvcodec_sim`), decode, prefill the question on the decoded cache and answer. TTFT
is compared with sending the context as text and recomputing its prefill at the receiver.
Optionally the cache is streamed in chunks of layers (the receiver decodes and prefills
while later chunks arrive), an adaptive sender picks each chunk's level against a TTFT
target, and the sweeps run the same numbers over many bandwidths or loss rates.

Receiver compute model (stated in the report): either the receiver is this machine,
running the same model in the same dtype, with its times measured here once per run, or
the times come from a receiver profile (``kvcodec profile``, ``specs/streaming.md`` §3)
measured on another device, interpolated at this context length. Sender encode times come
from the same source. With ``encode_ahead`` the sender holds its payloads encoded before
the request and encoding is not counted.

    TTFT(pipeline) = encode + delivery(len(payload)) + decode + question prefill on the cache
    TTFT(stream)   = the receiver timeline of specs/streaming.md §4 (chunks overlap)
    TTFT(text)     = delivery(len(context UTF-8)) + prefill of context + question

The question itself is not counted in any transfer (every path sends it).
"""

from __future__ import annotations

import math
import textwrap
import time
from typing import Callable, Sequence

import attrs

from kvcodec import api
from kvcodec.cache import KVCache
from kvcodec.generate import greedy
from kvcodec.pipeline import Pipeline
from kvcodec.prompts import split_prompt
from kvcodec_sim import ArqConfig, Bernoulli, Channel, Link, simulate_transfer
from kvcodec_sim.adapt import AdaptResult, ControllerConfig, Level, StreamPlan, TextOption, run_controller
from kvcodec_sim.delivery import deliver
from kvcodec_sim.receiver import CodecTiming, ReceiverProfile
from kvcodec_sim.streaming import ChunkWork, Timeline, build_timeline

DEFAULT_PIPELINES = (
    "fp16",
    "int8",
    "int4",
    "int4:axis=channel",
    "k=int4:axis=channel v=int4",
    "int4:axis=channel L0=fp16",
)
TEXT_ROW = "text + recompute"
ADAPTIVE_ROW = "adaptive"
DEFAULT_LAYERS_PER_CHUNK = 5


@attrs.frozen
class Row:
    """One line of the simulate table. Sizes in bytes, times in seconds."""

    pipeline: str
    bytes: int
    ratio_fp16: float
    bits_per_element: float
    rel_error: float | None  # ‖x̂ − x‖ / ‖x‖ over all keys and values; None for the text row
    encode_s: float
    decode_s: float
    transfer_s: float
    receiver_s: float  # receiver compute after the bytes arrive (prefill of question or context)
    ttft_s: float
    answer: str
    same_answer: bool
    goodput_bps: float = 0.0  # payload bits per second of delivery
    retransmissions: int = 0
    stream_bytes: int | None = None  # Σ len(chunk) when streamed
    stream_ttft_s: float | None = None
    met_target: bool | None = None  # min(TTFT, stream TTFT) ≤ target, when a target is given


@attrs.frozen
class Measured:
    """One pipeline (or adaptive level) on the real cache: bytes, error, codec times, answer."""

    name: str
    bytes: int
    rel_error: float
    encode_s: float
    decode_s: float
    chunk_bytes: tuple[int, ...] | None
    answer: str
    same_answer: bool


@attrs.frozen
class ProgressiveMeasured:
    """A progressive stream (``specs/progressive.md``) on the real cache, measured once per
    decodable prefix; :func:`simulate_channel` then plays each policy over the channel.

    Attributes:
        name: the stream's label (``prog8``, ``prog8[3+1+1+1+1+1]``).
        message_bytes: ``len()`` of each message, header first.
        reachable: planes decodable after 1, 2, … messages (``(0, 1, …, B)``).
        encode_s: sender time to encode the whole stream (seconds).
        decode_s, rel_error, confidence, answer, same_answer: per reachable prefix
            (``reachable[1:]``): receiver decode time (s), ‖x̂ − x‖/‖x‖, top-1 probability of
            the first answer token, the greedy answer, whether it equals the reference answer.
        policies: the adaptive policies to simulate.
    """

    name: str
    message_bytes: tuple[int, ...]
    reachable: tuple[int, ...]
    encode_s: float
    decode_s: tuple[float, ...]
    rel_error: tuple[float, ...]
    confidence: tuple[float, ...]
    answer: tuple[str, ...]
    same_answer: tuple[bool, ...]
    policies: tuple = ()

    def at(self, planes: int) -> int:
        """Index into the per-prefix tuples of the prefix with ``planes`` planes."""
        return self.reachable.index(planes) - 1

    def messages_for(self, planes: int) -> int:
        """Messages (header included) that carry ``planes`` planes."""
        return self.reachable.index(planes) + 1


@attrs.frozen
class Prepared:
    """Everything measured on the model, before any channel: what :func:`simulate_channel` needs."""

    model: str
    device: str
    dtype: str
    context_tokens: int
    question: str
    elements: int
    layers: int
    fp16_bytes: int
    text_bytes: int
    profile: ReceiverProfile
    receiver_source: str  # "measured in this run" or the profile file
    pipelines: tuple[Measured, ...]
    levels: tuple[Measured, ...]
    ranges: tuple[tuple[int, int], ...] | None  # chunk layer ranges when streaming
    chunk_elements: tuple[int, ...] | None
    reference_answer: str
    prefill_context_s: float
    progressive: ProgressiveMeasured | None = None

    @property
    def question_prefill_s(self) -> float:
        return self.profile.question_time_s(self.context_tokens)

    @property
    def text_prefill_s(self) -> float:
        return self.profile.text_time_s(self.context_tokens)


@attrs.frozen
class Options:
    """How to simulate: the channel's transport, streaming, adaptation, sender."""

    arq: ArqConfig | None = None
    seed: int = 0
    target_s: float | None = None
    encode_ahead: bool = False
    initial_bps: float | None = None  # adaptive controller's first estimate; None: nominal goodput


@attrs.frozen
class Report:
    model: str
    device: str
    dtype: str
    context_tokens: int
    question: str
    channel: Channel
    elements: int
    prefill_context_s: float
    prefill_question_s: float
    prefill_full_s: float
    reference_answer: str
    rows: tuple[Row, ...]
    receiver_source: str = "measured in this run"
    layers_per_chunk: int | None = None
    options: Options = Options()
    adaptive: AdaptResult | None = None
    timelines: tuple[Timeline, ...] = ()

    @property
    def link(self) -> Link:
        return self.channel.link

    def to_json(self) -> dict:
        out = {
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "context_tokens": self.context_tokens,
            "question": self.question,
            "link": {
                "bandwidth_bps": self.link.bandwidth_bps,
                "latency_s": self.link.latency_s,
                "mtu_bytes": self.link.mtu_bytes,
                "header_bytes": self.link.header_bytes,
            },
            "channel": self.channel.describe(),
            "seed": self.options.seed,
            "kv_elements": self.elements,
            "receiver": {
                "model": ("this machine, same model and dtype; prefill times measured in this run"
                          if self.receiver_source == "measured in this run" else f"profile {self.receiver_source}"),
                "prefill_context_s": self.prefill_context_s,
                "prefill_question_on_cache_s": self.prefill_question_s,
                "prefill_context_and_question_s": self.prefill_full_s,
            },
            "encode_ahead": self.options.encode_ahead,
            "layers_per_chunk": self.layers_per_chunk,
            "target_ttft_s": self.options.target_s,
            "reference_answer": self.reference_answer,
            "rows": [attrs.asdict(r) for r in self.rows],
        }
        if self.adaptive is not None:
            out["adaptive"] = self.adaptive.to_json()
        return out

    def timeline_json(self) -> dict:
        """The timelines (``specs/streaming.md`` §4.3) with what they were simulated on."""
        return {
            "model": self.model,
            "context_tokens": self.context_tokens,
            "channel": self.channel.describe(),
            "seed": self.options.seed,
            "receiver": self.receiver_source,
            "target_ttft_s": self.options.target_s,
            "timelines": [t.to_json() for t in self.timelines],
            "adaptive": None if self.adaptive is None else self.adaptive.to_json(),
        }


def fit_tokens(tokenizer, text: str, tokens: int | None) -> str:
    """``text`` cut (or repeated, then cut) so that it tokenizes to about ``tokens`` tokens."""
    if tokens is None:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    while len(ids) < tokens:
        text = text + "\n\n" + text
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[:tokens])


def relative_error(reference: KVCache, decoded: KVCache) -> float:
    """``sqrt(Σ‖x̂ − x‖² / Σ‖x‖²)`` over the keys and values of every layer (float64)."""
    num = den = 0.0
    for a, b in zip(reference, decoded):
        for x, y in ((a.keys, b.keys), (a.values, b.values)):
            x64 = x.double()
            num += float((y.double() - x64).pow(2).sum())
            den += float(x64.pow(2).sum())
    return math.sqrt(num / den) if den else 0.0


#: Above this many packets the transfer time is the link's closed form instead of a SimPy
#: run (they agree to ~1e-12, see tests/test_sim_link.py); it keeps tiny MTUs from taking
#: minutes and gigabytes.
SIMULATED_PACKETS_MAX = 200_000


def transfer_time(link: Link, nbytes: int) -> float:
    """Delivery time in seconds of ``nbytes`` over ``link`` (SimPy, or the closed form above
    :data:`SIMULATED_PACKETS_MAX` packets)."""
    if link.packet_count(nbytes) > SIMULATED_PACKETS_MAX:
        return link.closed_form_time(nbytes)
    return simulate_transfer(link, nbytes).delivery_time_s


def _timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def as_channel(link: Link | Channel) -> Channel:
    return Channel(link) if isinstance(link, Link) else link


def profile_levels(pipelines: Sequence[str | Pipeline], levels: Sequence[str | Pipeline] = ()) -> list[str]:
    """Canonical specs of every pipeline and level a run needs codec times for."""
    out: list[str] = []
    for p in list(pipelines) + list(levels):
        name = api.as_pipeline(p).describe()
        if name not in out:
            out.append(name)
    return out


# ----------------------------------------------------------------------------- phase 1: the model
def prepare(
    lm,
    context: str,
    question: str,
    pipelines: Sequence[str | Pipeline],
    *,
    tokens: int | None = None,
    max_new_tokens: int = 24,
    layers_per_chunk: int | None = None,
    levels: Sequence[str | Pipeline] = (),
    profile: ReceiverProfile | None = None,
    profile_source: str = "",
    answers: bool = True,
    on_step: Callable[[str], None] | None = None,
    progressive: str | Pipeline | None = None,
    policies: Sequence = (),
    planes_per_message: int | Sequence[int] = 1,
) -> Prepared:
    """Prefill the context, measure the receiver (unless ``profile`` is given), run the real
    cache through every pipeline and level: bytes, chunk sizes, error, codec times, answers.

    ``lm`` is a :class:`kvcodec.models.LoadedModel`. With ``answers=False`` no answer is
    generated (the sweeps). With ``progressive`` (a ``prog`` stream spec), the stream's
    every decodable prefix is decoded and probed (first-token confidence, answer) for the
    adaptive ``policies`` (:class:`kvcodec.adaptive.Policy`); its decode times are measured
    on this machine even when a profile gives the others.
    """
    from kvcodec.profile import measure_point, prefill_cache
    from kvcodec.stream import encode_chunks, layer_ranges

    step = on_step or (lambda _msg: None)
    if levels and not layers_per_chunk:
        raise ValueError("adaptive levels need layers_per_chunk (the adaptive sender streams chunks)")
    model, tok = lm.model, lm.tokenizer
    context = fit_tokens(tok, context, tokens)
    parts = split_prompt(tok, context, question, chat=lm.chat)
    parsed = [api.as_pipeline(p) for p in pipelines]
    level_pipes = [api.as_pipeline(p) for p in levels]
    n = len(parts.context_ids)

    step("warming up")
    measure_point(model, parts.context_ids[:16], parts.question_ids, (), 1)
    if profile is None:
        step(f"prefill of {n} context tokens; receiver compute (text path, question prefill per layer)")
        point = measure_point(model, parts.context_ids, parts.question_ids, (), 1, step)
        cache: KVCache = point["cache"]
        prefill_context_s = point["context_prefill_s"]
    else:
        step(f"prefill of {n} context tokens (sender)")
        cache, prefill_context_s = _timed(prefill_cache, model, parts.context_ids)
        # the report's receiver figures all come from the profile (this machine's time is not the receiver's)
        profiled = profile.context_time_s(n)
        prefill_context_s = prefill_context_s if profiled is None else profiled
    if answers:
        step("receiver compute: reference answer from the uncompressed cache")
        reference = greedy(model, tok, cache, parts.question_ids, max_new_tokens=max_new_tokens)
    ranges = layer_ranges(cache.num_layers, layers_per_chunk) if layers_per_chunk else None
    chunk_elements = None
    if ranges:
        per_layer = [layer.keys.numel() + layer.values.numel() for layer in cache]
        chunk_elements = tuple(sum(per_layer[a : a + c]) for a, c in ranges)

    fp16_bytes = len(api.encode(cache, "fp16"))

    def measure(pipeline: Pipeline, with_answer: bool) -> Measured:
        name = pipeline.describe()
        step(f"pipeline {name}")
        payload, enc_s = _timed(api.encode, cache, pipeline)
        received, dec_s = _timed(api.decode, payload, device=cache.device)
        chunk_bytes = None
        if layers_per_chunk:
            chunk_bytes = tuple(len(c) for c in encode_chunks(cache, pipeline, layers_per_chunk))
        answer, same = "", True
        if with_answer and answers:
            got = greedy(model, tok, received, parts.question_ids, max_new_tokens=max_new_tokens)
            answer, same = got.text, got.token_ids == reference.token_ids
        return Measured(name, len(payload), relative_error(cache, received), enc_s, dec_s, chunk_bytes, answer, same)

    measured = [measure(p, True) for p in parsed]
    by_name = {m.name: m for m in measured}
    level_measured = []
    for p in level_pipes:
        name = p.describe()
        level_measured.append(by_name[name] if name in by_name and by_name[name].chunk_bytes is not None
                              else measure(p, False))

    prog = None
    if progressive is not None:
        prog = _measure_progressive(lm, cache, parts.question_ids, progressive, planes_per_message, policies,
                                    max_new_tokens, reference.token_ids if answers else None, step)

    if profile is None:  # this machine: one grid point at this context length
        codecs = {m.name: CodecTiming((m.encode_s,), (m.decode_s,), (cache.num_elements,))
                  for m in measured + level_measured}
        profile = ReceiverProfile(
            model=lm.name, device=str(lm.device), dtype=str(cache.dtype).replace("torch.", ""),
            layers=cache.num_layers, question_tokens=len(parts.question_ids), tokens=(n,),
            text_prefill_s=(point["text_prefill_s"],), question_prefill_s=(point["question_prefill_s"],),
            layer_s=(tuple(point["layer_s"]),), head_s=(point["head_s"],), codecs=codecs,
            meta={"source": "measured in this run"},
        )
        source = "measured in this run"
    else:
        source = profile_source or "profile"

    def with_profile_times(m: Measured) -> Measured:
        return attrs.evolve(m, encode_s=profile.encode_time_s(m.name, n), decode_s=profile.decode_time_s(m.name, n))

    return Prepared(
        model=lm.name,
        device=str(lm.device),
        dtype=str(cache.dtype).replace("torch.", ""),
        context_tokens=n,
        question=question,
        elements=cache.num_elements,
        layers=cache.num_layers,
        fp16_bytes=fp16_bytes,
        text_bytes=len(context.encode("utf-8")),
        profile=profile,
        receiver_source=source,
        pipelines=tuple(with_profile_times(m) for m in measured),
        levels=tuple(with_profile_times(m) for m in level_measured),
        ranges=tuple(ranges) if ranges else None,
        chunk_elements=chunk_elements,
        reference_answer=reference.text if answers else "",
        prefill_context_s=prefill_context_s,
        progressive=prog,
    )


def _measure_progressive(lm, cache: KVCache, question_ids, spec, planes_per_message, policies, max_new_tokens,
                         reference_ids, step) -> ProgressiveMeasured:
    """Encode ``cache`` as a progressive stream; decode and probe every prefix."""
    from kvcodec.adaptive import stream_label, top1_probability
    from kvcodec.progressive import ProgressiveDecoder, encode_planes

    label = stream_label(spec, planes_per_message)
    step(f"progressive stream {label}")
    stream, enc_s = _timed(encode_planes, cache, spec, planes_per_message=planes_per_message)
    dec = ProgressiveDecoder()
    dec.feed(stream.messages[0])
    decode_s, errors, conf, answers, same = [], [], [], [], []
    for message in stream.messages[1:]:
        t0 = time.perf_counter()
        dec.feed(message)
        received = dec.cache(cache.device)
        decode_s.append(time.perf_counter() - t0)
        errors.append(relative_error(cache, received))
        got = greedy(lm.model, lm.tokenizer, received, question_ids, max_new_tokens=max_new_tokens)
        conf.append(float(top1_probability(got.first_logits)))
        answers.append(got.text)
        same.append(reference_ids is None or got.token_ids == reference_ids)
    return ProgressiveMeasured(label, tuple(len(m) for m in stream.messages), stream.reachable, enc_s,
                               tuple(decode_s), tuple(errors), tuple(conf), tuple(answers), tuple(same), tuple(policies))


# ----------------------------------------------------------------------------- phase 2: the channel
def _whole_works(prep: Prepared, m: Measured) -> list[ChunkWork]:
    prefill = sum(prep.profile.layer_times_s(prep.context_tokens))
    return [ChunkWork(m.bytes, m.decode_s, prefill, 0, prep.layers, m.name)]


def _chunk_works(prep: Prepared, m: Measured) -> list[ChunkWork]:
    n, p = prep.context_tokens, prep.profile
    return [
        ChunkWork(b, p.decode_time_s(m.name, n, share=e / prep.elements), p.prefill_layers_s(n, first, count),
                  first, count, m.name)
        for b, e, (first, count) in zip(m.chunk_bytes, prep.chunk_elements, prep.ranges)
    ]


def nominal_goodput(channel: Channel) -> float:
    """Payload bit/s of back-to-back full packets at the link's nominal bandwidth."""
    link = channel.link
    return link.bandwidth_bps * link.payload_per_packet / link.mtu_bytes


def stream_plan(prep: Prepared, opts: Options) -> StreamPlan:
    """The adaptive controller's inputs from the measured levels."""
    n, p = prep.context_tokens, prep.profile
    levels = [
        Level(m.name, m.chunk_bytes, [w.decode_s for w in _chunk_works(prep, m)]) for m in prep.levels
    ]
    start = 0.0 if opts.encode_ahead else sum(m.encode_s for m in prep.levels)
    return StreamPlan(
        levels=levels,
        prefill_s=[p.prefill_layers_s(n, first, count) for first, count in prep.ranges],
        layer_counts=[count for _, count in prep.ranges],
        first_layers=[first for first, _ in prep.ranges],
        head_s=p.head_time_s(n),
        target_s=opts.target_s,
        start_s=start,
        text=TextOption(prep.text_bytes, prep.text_prefill_s),
    )


def simulate_channel(prep: Prepared, channel: Link | Channel, opts: Options = Options(), *,
                     hindsight: bool = True) -> tuple[list[Row], AdaptResult | None, list[Timeline]]:
    """Rows, adaptive result and timelines of ``prep`` over ``channel``."""
    channel = as_channel(channel)
    rows, timelines = [], []
    target = opts.target_s
    question_s = prep.question_prefill_s
    for m in prep.pipelines:
        start = 0.0 if opts.encode_ahead else m.encode_s
        d = deliver(channel, m.bytes, config=opts.arq, seed=opts.seed)
        whole = build_timeline(_whole_works(prep, m), d, start_s=start, head_s=prep.profile.head_time_s(prep.context_tokens),
                               label=m.name, mode="whole")
        stream = None
        if prep.ranges:
            works = _chunk_works(prep, m)
            ds = deliver(channel, sum(w.nbytes for w in works), config=opts.arq, seed=opts.seed)
            stream = build_timeline(works, ds, start_s=start, head_s=whole.head_s, label=f"{m.name} (stream)")
            timelines.append(stream)
        else:
            timelines.append(whole)
        best = min(whole.ttft_s, stream.ttft_s) if stream else whole.ttft_s
        rows.append(_row(
            prep, m.name, m.bytes, target, best,
            rel_error=m.rel_error,
            encode_s=m.encode_s,
            decode_s=m.decode_s,
            transfer_s=d.delivery_time_s,
            receiver_s=question_s,
            ttft_s=whole.ttft_s,
            answer=m.answer,
            same_answer=m.same_answer,
            goodput_bps=d.goodput_bps,
            retransmissions=d.retransmissions,
            stream_bytes=stream.nbytes if stream else None,
            stream_ttft_s=stream.ttft_s if stream else None,
        ))
    adaptive = None
    if prep.levels and target is not None:
        plan = stream_plan(prep, opts)
        config = ControllerConfig(initial_bps=opts.initial_bps or nominal_goodput(channel))
        adaptive = run_controller(plan, channel, config, arq=opts.arq, seed=opts.seed, with_hindsight=hindsight)
        timelines.append(adaptive.timeline)
    if prep.progressive is not None:
        rows.extend(_progressive_rows(prep, channel, opts))
    d = deliver(channel, prep.text_bytes, config=opts.arq, seed=opts.seed)
    text = build_timeline([ChunkWork(prep.text_bytes, 0.0, prep.text_prefill_s, 0, prep.layers, "text")], d,
                          label=TEXT_ROW, mode="text")
    timelines.append(text)
    rows.append(_row(
        prep, TEXT_ROW, prep.text_bytes, target, text.ttft_s,
        rel_error=None,
        encode_s=0.0,
        decode_s=0.0,
        transfer_s=d.delivery_time_s,
        receiver_s=prep.text_prefill_s,
        ttft_s=text.ttft_s,
        answer=prep.reference_answer,
        same_answer=True,
        goodput_bps=d.goodput_bps,
        retransmissions=d.retransmissions,
    ))
    return rows, adaptive, timelines


def _row(prep: Prepared, pipeline: str, nbytes: int, target: float | None, best_s: float, **fields) -> Row:
    """A :class:`Row` of ``nbytes`` bytes: its ratio to FP16 and bits per element from
    ``prep``; it meets ``target`` (seconds) when its best TTFT ``best_s`` is within it."""
    return Row(pipeline=pipeline, bytes=nbytes, ratio_fp16=nbytes / prep.fp16_bytes,
               bits_per_element=8 * nbytes / prep.elements,
               met_target=None if target is None else best_s <= target, **fields)


def _progressive_rows(prep: Prepared, channel: Channel, opts: Options) -> list[Row]:
    """One row per fixed prefix (``prog8@3``: the first 3 planes, sent and decoded once) and
    per adaptive policy (``prog8 p1>=0.5,start=3``): the receiver decodes after ``start``
    planes, prefills the question and reads the first token's top-1 probability; below the
    threshold it asks the sender for the next message (the request takes the link's one-way
    latency) and checks again. TTFT is the end of the accepted check, whose first token is
    the answer's first token (``specs/progressive.md`` §6)."""
    from kvcodec.adaptive import decide

    pm = prep.progressive
    n = prep.context_tokens
    check_s = prep.profile.question_time_s(n)
    start = 0.0 if opts.encode_ahead else pm.encode_s
    latency = channel.link.latency_s
    target = opts.target_s
    rows = []

    def row(name: str, planes: int, nbytes: int, transfer: float, receiver: float, ttft: float, retx: int) -> Row:
        i = pm.at(planes)
        return _row(
            prep, name, nbytes, target, ttft,
            rel_error=pm.rel_error[i], encode_s=0.0 if opts.encode_ahead else pm.encode_s, decode_s=pm.decode_s[i],
            transfer_s=transfer, receiver_s=receiver, ttft_s=ttft, answer=pm.answer[i], same_answer=pm.same_answer[i],
            goodput_bps=8 * nbytes / transfer if transfer > 0 else 0.0, retransmissions=retx,
        )

    for planes in pm.reachable[1:]:
        nbytes = sum(pm.message_bytes[: pm.messages_for(planes)])
        d = deliver(channel, nbytes, config=opts.arq, seed=opts.seed)
        receiver = pm.decode_s[pm.at(planes)] + check_s
        rows.append(row(f"{pm.name}@{planes}", planes, nbytes, d.delivery_time_s, receiver,
                        start + d.delivery_time_s + receiver, d.retransmissions))
    for k, policy in enumerate(pm.policies):
        decision = decide(policy, pm.reachable[1:], {p: pm.confidence[pm.at(p)] for p in pm.reachable[1:]})
        t, sent, transfer, receiver, retx = start, 0, 0.0, 0.0, 0
        for planes, _confidence in decision.trail:
            upto = pm.messages_for(planes)
            if sent:  # a request for more goes back to the sender first
                t += latency
            d = deliver(channel, sum(pm.message_bytes[sent:upto]), config=opts.arq, seed=opts.seed + 1 + k)
            t += d.delivery_time_s
            transfer += d.delivery_time_s
            retx += d.retransmissions
            sent = upto
            work = pm.decode_s[pm.at(planes)] + check_s
            t += work
            receiver += work
        rows.append(row(f"{pm.name} {policy.describe()}", decision.planes, sum(pm.message_bytes[:sent]),
                        transfer, receiver, t, retx))
    return rows


def report(prep: Prepared, channel: Link | Channel, opts: Options = Options(), layers_per_chunk: int | None = None) -> Report:
    """Simulate ``prep`` over ``channel`` and gather the :class:`Report`."""
    channel = as_channel(channel)
    rows, adaptive, timelines = simulate_channel(prep, channel, opts)
    return Report(
        model=prep.model,
        device=prep.device,
        dtype=prep.dtype,
        context_tokens=prep.context_tokens,
        question=prep.question,
        channel=channel,
        elements=prep.elements,
        prefill_context_s=prep.prefill_context_s,
        prefill_question_s=prep.question_prefill_s,
        prefill_full_s=prep.text_prefill_s,
        reference_answer=prep.reference_answer,
        rows=tuple(rows),
        receiver_source=prep.receiver_source,
        layers_per_chunk=layers_per_chunk,
        options=opts,
        adaptive=adaptive,
        timelines=tuple(timelines),
    )


def run(
    lm,
    context: str,
    question: str,
    pipelines: Sequence[str | Pipeline],
    link: Link | Channel,
    *,
    tokens: int | None = None,
    max_new_tokens: int = 24,
    on_step: Callable[[str], None] | None = None,
    layers_per_chunk: int | None = None,
    levels: Sequence[str | Pipeline] = (),
    profile: ReceiverProfile | None = None,
    profile_source: str = "",
    options: Options = Options(),
) -> Report:
    """Run the main job. ``lm`` is a :class:`kvcodec.models.LoadedModel`."""
    prep = prepare(lm, context, question, pipelines, tokens=tokens, max_new_tokens=max_new_tokens,
                   layers_per_chunk=layers_per_chunk, levels=levels, profile=profile, profile_source=profile_source,
                   on_step=on_step)
    return report(prep, link, options, layers_per_chunk)


# ----------------------------------------------------------------------------- sweeps
def log_points(low: float, high: float, count: int) -> list[float]:
    """``count`` log-spaced values from ``low`` to ``high`` (both included)."""
    if count == 1:
        return [low]
    return [low * (high / low) ** (i / (count - 1)) for i in range(count)]


def lin_points(low: float, high: float, count: int) -> list[float]:
    """``count`` evenly spaced values from ``low`` to ``high`` (both included)."""
    if count == 1:
        return [low]
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def with_bandwidth(channel: Channel, bps: float) -> Channel:
    return attrs.evolve(channel, link=attrs.evolve(channel.link, bandwidth_bps=bps))


def with_loss(channel: Channel, p: float) -> Channel:
    """``channel`` with independent loss ``p`` in both directions (as ``loss=p``)."""
    model = Bernoulli(p)
    return attrs.evolve(channel, data_loss=model, ack_loss=model)


@attrs.frozen
class SweepPoint:
    x: float  # bandwidth (bit/s) or loss probability
    channel: str
    rows: tuple[Row, ...]
    adaptive: AdaptResult | None

    def to_json(self) -> dict:
        return {
            "x": self.x,
            "channel": self.channel,
            "rows": [attrs.asdict(r) for r in self.rows],
            "adaptive": None if self.adaptive is None else self.adaptive.to_json(),
        }


def sweep(prep: Prepared, channels: Sequence[tuple[float, Channel]], opts: Options,
          on_point: Callable[[int], None] | None = None) -> list[SweepPoint]:
    """Simulate ``prep`` over each channel (the model is not run again)."""
    out = []
    for i, (x, channel) in enumerate(channels):
        rows, adaptive, _ = simulate_channel(prep, channel, opts)
        out.append(SweepPoint(x, channel.describe(), tuple(rows), adaptive))
        if on_point:
            on_point(i + 1)
    return out


# ----------------------------------------------------------------------------- the timeline plot
def plot_timelines(timelines: Sequence[Timeline], path, title: str = "", target_s: float | None = None) -> None:
    """A PNG with one lane per timeline: sender encode, each chunk's transfer (first byte
    handed over → last byte delivered, with an arrival tick), decode and prefill on the
    receiver, and the first token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.lines import Line2D

    lanes = list(timelines)
    fig, ax = plt.subplots(figsize=(12, 0.9 * len(lanes) + 1.8))
    shades = ("#6baed6", "#2171b5")
    for row, tl in enumerate(reversed(lanes)):
        y = row
        if tl.start_s > 0:
            ax.broken_barh([(0, tl.start_s * 1e3)], (y + 0.05, 0.25), color="#bdbdbd")
        for c in tl.chunks:
            ax.broken_barh([(c.sent_s * 1e3, max(c.arrived_s - c.sent_s, 0) * 1e3)], (y + 0.08, 0.18),
                           color=shades[c.index % 2])
            ax.plot([c.arrived_s * 1e3] * 2, [y + 0.02, y + 0.34], color="#08306b", lw=0.8)
            if c.decode_end_s > c.decode_start_s:
                ax.broken_barh([(c.decode_start_s * 1e3, (c.decode_end_s - c.decode_start_s) * 1e3)],
                               (y - 0.3, 0.28), color="#fd8d3c")
            ax.broken_barh([(c.prefill_start_s * 1e3, (c.prefill_end_s - c.prefill_start_s) * 1e3)],
                           (y - 0.3, 0.28), color="#41ab5d", edgecolor="white", linewidth=0.3)
        ax.plot([tl.first_token_s * 1e3], [y], marker="D", color="#cb181d", markersize=7)
        ax.annotate(f"{tl.first_token_s * 1e3:.0f} ms", (tl.first_token_s * 1e3, y), xytext=(6, -3),
                    textcoords="offset points", fontsize=8, color="#cb181d")
    if target_s is not None:
        ax.axvline(target_s * 1e3, color="#cb181d", ls="--", lw=0.8)
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels([tl.label for tl in reversed(lanes)], fontsize=8)
    ax.set_xlabel("time since the request (ms)")
    ax.set_xlim(left=0)
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    ax.set_title("\n".join(textwrap.wrap(title, 115)), fontsize=9, loc="left")
    handles = [Patch(color="#bdbdbd", label="sender encode"), Patch(color=shades[0], label="chunk transfer"),
               Line2D([], [], color="#08306b", label="chunk arrived"), Patch(color="#fd8d3c", label="decode"),
               Patch(color="#41ab5d", label="prefill (layers)"),
               Line2D([], [], marker="D", color="#cb181d", ls="", label="first token")]
    if target_s is not None:
        handles.append(Line2D([], [], color="#cb181d", ls="--", label="target"))
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 if len(lanes) > 3 else -0.25),
              ncol=len(handles), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
