"""The main job: a real model's KV cache through each pipeline and over a simulated link.

For every pipeline: encode the real cache (timed here), send ``len(payload)`` bytes over the
SimPy link, decode (timed here), prefill the question on the decoded cache and answer.
TTFT is compared with sending the context as text and recomputing its prefill at the
receiver.

Receiver compute model (stated in the report): the receiver is this machine, running the
same model in the same dtype; its prefill times are measured here, once per run.

    TTFT(pipeline) = encode + link delivery(len(payload)) + decode + question prefill on the cache
    TTFT(text)     = link delivery(len(context UTF-8)) + prefill of context + question

The question itself is not counted in either transfer (both paths send it).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import attrs

from kvcodec import api
from kvcodec.cache import KVCache
from kvcodec.generate import greedy, prefill
from kvcodec.pipeline import Pipeline
from kvcodec.prompts import split_prompt
from kvcodec_sim import Link, simulate_transfer

DEFAULT_PIPELINES = (
    "fp16",
    "int8",
    "int4",
    "int4:axis=channel",
    "k=int4:axis=channel v=int4",
    "int4:axis=channel L0=fp16",
)
TEXT_ROW = "text + recompute"


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


@attrs.frozen
class Report:
    model: str
    device: str
    dtype: str
    context_tokens: int
    question: str
    link: Link
    elements: int
    prefill_context_s: float
    prefill_question_s: float
    prefill_full_s: float
    reference_answer: str
    rows: tuple[Row, ...]

    def to_json(self) -> dict:
        return {
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
            "kv_elements": self.elements,
            "receiver": {
                "model": "this machine, same model and dtype; prefill times measured in this run",
                "prefill_context_s": self.prefill_context_s,
                "prefill_question_on_cache_s": self.prefill_question_s,
                "prefill_context_and_question_s": self.prefill_full_s,
            },
            "reference_answer": self.reference_answer,
            "rows": [attrs.asdict(r) for r in self.rows],
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


def run(
    lm,
    context: str,
    question: str,
    pipelines: Sequence[str | Pipeline],
    link: Link,
    *,
    tokens: int | None = None,
    max_new_tokens: int = 24,
    on_step: Callable[[str], None] | None = None,
) -> Report:
    """Run the main job. ``lm`` is a :class:`kvcodec.models.LoadedModel`."""
    step = on_step or (lambda _msg: None)
    model, tok = lm.model, lm.tokenizer
    context = fit_tokens(tok, context, tokens)
    parts = split_prompt(tok, context, question, chat=lm.chat)
    parsed = [api.as_pipeline(p) for p in pipelines]

    step("warming up")
    prefill(model, parts.context_ids[:16])
    step(f"prefill of {len(parts.context_ids)} context tokens (sender)")
    cache, prefill_ctx_s = _timed(prefill, model, parts.context_ids)
    step("receiver compute: text path (prefill of context + question)")
    _, prefill_full_s = _timed(prefill, model, parts.context_ids + parts.question_ids)
    step("receiver compute: reference answer from the uncompressed cache")
    _, prefill_q_s = _timed(greedy, model, tok, cache, parts.question_ids, max_new_tokens=1)
    reference = greedy(model, tok, cache, parts.question_ids, max_new_tokens=max_new_tokens)

    fp16_bytes = len(api.encode(cache, "fp16"))
    rows = []
    for pipeline in parsed:
        name = pipeline.describe()
        step(f"pipeline {name}")
        payload, enc_s = _timed(api.encode, cache, pipeline)
        received, dec_s = _timed(api.decode, payload, device=cache.device)
        transfer = transfer_time(link, len(payload))
        answer = greedy(model, tok, received, parts.question_ids, max_new_tokens=max_new_tokens)
        rows.append(
            Row(
                pipeline=name,
                bytes=len(payload),
                ratio_fp16=len(payload) / fp16_bytes,
                bits_per_element=8 * len(payload) / cache.num_elements,
                rel_error=relative_error(cache, received),
                encode_s=enc_s,
                decode_s=dec_s,
                transfer_s=transfer,
                receiver_s=prefill_q_s,
                ttft_s=enc_s + transfer + dec_s + prefill_q_s,
                answer=answer.text,
                same_answer=answer.token_ids == reference.token_ids,
            )
        )
    text_bytes = len(context.encode("utf-8"))
    text_transfer = transfer_time(link, text_bytes)
    rows.append(
        Row(
            pipeline=TEXT_ROW,
            bytes=text_bytes,
            ratio_fp16=text_bytes / fp16_bytes,
            bits_per_element=8 * text_bytes / cache.num_elements,
            rel_error=None,
            encode_s=0.0,
            decode_s=0.0,
            transfer_s=text_transfer,
            receiver_s=prefill_full_s,
            ttft_s=text_transfer + prefill_full_s,
            answer=reference.text,
            same_answer=True,
        )
    )
    return Report(
        model=lm.name,
        device=str(lm.device),
        dtype=str(cache.dtype).replace("torch.", ""),
        context_tokens=len(parts.context_ids),
        question=question,
        link=link,
        elements=cache.num_elements,
        prefill_context_s=prefill_ctx_s,
        prefill_question_s=prefill_q_s,
        prefill_full_s=prefill_full_s,
        reference_answer=reference.text,
        rows=tuple(rows),
    )
