"""The evaluation protocol (``specs/evaluation.md``): what each pipeline costs in answer quality.

For every sample:

1. the sender prefills the task's **context** once and gets its KV cache;
2. for every pipeline the cache really goes through the codec chain: encode → bytes →
   decode (``bytes`` in a record is ``len()`` of that payload). When a pipeline's token
   selector reads attention (``q2c``, ``snapkv``, ``h2o``), the sender first computes the
   statistics they ask for once per sample (one eager prefill of context + question,
   :mod:`kvcodec.attention`) and hands them, with the question's token ids, to the cache
   stages as their ``context``;
3. the receiver appends the **query** to each decoded cache — all pipelines of a sample
   plus the uncoded full-precision cache (the ``"full"`` baseline) run as one batch —
   and decodes greedily (or reads the choice letters' logits for multiple choice);
4. the teacher-forced mean NLL of the first gold answer is measured on the same caches;
5. one record per (sample, pipeline) is appended to the results file.

The baseline is computed once per sample and shared by all pipelines; a rerun skips every
record already in the results file. A record's ``elements`` is the number of key and value
elements of the *full* sender cache, also for a token selector that sends fewer, so that
``bits_per_element`` (``8 · bytes / elements``) compares pipelines at the same scale:
bits spent per element of the cache being replaced.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Sequence

import attrs

from kvcodec.attention import attention_requests, attention_scores
from kvcodec.cache import KVCache
from kvcodec.generate import (
    answer_nll,
    answer_nll_rows,
    choice_logits,
    greedy_batch,
    greedy_rows,
    prefill,
    receiver_batches,
)
from kvcodec.pipeline import Pipeline
from kvcodec.prompts import task_prompt
from kvcodec.roundtrip import RoundTripper
from kvcodec.results import FULL, ResultsFile, provenance, record_key
from kvcodec.scoring import normalize_answer

LETTERS = "ABCDEFGHIJ"


@attrs.frozen
class Settings:
    """How a run generates: ``max_new_tokens`` per answer, ``batch_size`` caches per forward
    pass, the sampling ``seed`` of the task, ``workers``: processes that run the
    codecs (0: in this process; see :mod:`kvcodec.roundtrip`), and ``samples_per_batch``:
    samples whose pipelines the receiver decodes together (1: each sample's pipelines as
    their own batches; more: rows of different samples padded into one batch,
    :func:`kvcodec.generate.greedy_rows` — fewer, fuller forward passes for a
    launch-bound GPU; generation tasks only)."""

    max_new_tokens: int = 32
    batch_size: int = 32
    seed: int = 0
    workers: int = 0
    samples_per_batch: int = 1


@attrs.frozen
class RunStats:
    """What a run did and where its time went (seconds of wall time in this process)."""

    samples: int  # samples that needed work
    results: int  # (sample, pipeline) records written, baselines included
    skipped: int  # records already in the results file
    seconds: float
    prefill_seconds: float = 0.0  # sender: context prefills
    codec_seconds: float = 0.0  # waiting for encode → bytes → decode (all of it when workers=0)
    receiver_seconds: float = 0.0  # receiver: greedy decoding / choice logits and answer NLL

    @property
    def results_per_second(self) -> float:
        return self.results / self.seconds if self.seconds else 0.0


def _predict(lm, task, caches: list[KVCache], prompt, letters: str, settings: Settings) -> list[tuple[str, float | None]]:
    """(prediction, answer NLL) for every cache, running them through the model as batches."""
    out: list[tuple[str, float | None] | None] = [None] * len(caches)
    for group in receiver_batches(caches, settings.batch_size):
        batch, rows = group.cache.to(device=lm.model.device), group.positions
        if task.kind == "choice":
            logits = choice_logits(lm.model, lm.tokenizer, batch, prompt.question_ids, letters, positions=rows)
            preds = [letters[int(row.argmax())] for row in logits]
        else:
            gens = greedy_batch(lm.model, lm.tokenizer, batch, prompt.question_ids,
                                max_new_tokens=settings.max_new_tokens, positions=rows)
            preds = [g.text for g in gens]
        if prompt.answer_ids:
            nlls = answer_nll(lm.model, batch, prompt.question_ids, prompt.answer_ids, positions=rows).tolist()
        else:
            nlls = [None] * len(preds)
        for i, pred, nll in zip(group.members, preds, nlls):
            out[i] = (pred, nll)
    return out


def _predict_rows(lm, caches: list[KVCache], prompts: list, settings: Settings) -> list[tuple[str, float | None]]:
    """(prediction, answer NLL) for every cache, ``prompts[i]`` being the prompt of
    ``caches[i]``'s sample: rows of different samples share forward passes (generation
    tasks), ``settings.batch_size`` rows at a time."""
    out: list[tuple[str, float | None]] = []
    for i in range(0, len(caches), settings.batch_size):
        chunk, chunk_prompts = caches[i : i + settings.batch_size], prompts[i : i + settings.batch_size]
        gens = greedy_rows(lm.model, lm.tokenizer, chunk, [p.question_ids for p in chunk_prompts],
                           max_new_tokens=settings.max_new_tokens)
        scored = [j for j, p in enumerate(chunk_prompts) if p.answer_ids]
        nlls: list[float | None] = [None] * len(chunk)
        if scored:
            values = answer_nll_rows(lm.model, [chunk[j] for j in scored], [chunk_prompts[j].question_ids for j in scored],
                                     [chunk_prompts[j].answer_ids for j in scored]).tolist()
            for j, v in zip(scored, values):
                nlls[j] = v
        out.extend((g.text, n) for g, n in zip(gens, nlls))
    return out


def _selector_context(lm, prompt, pipelines: Sequence[Pipeline]) -> dict | None:
    """What the cache stages of ``pipelines`` read (``CacheStage.apply``'s ``context``):
    ``question_ids``, plus ``attention`` — the sender's attention statistics
    (:func:`kvcodec.attention.attention_scores`) — when a stage asks for some; ``None``
    when no pipeline has a cache stage."""
    if not any(p.cache_stages for p in pipelines):
        return None
    context: dict = {"question_ids": list(prompt.question_ids)}
    requests = attention_requests(pipelines)
    if requests:
        context["attention"] = attention_scores(lm.model, prompt.context_ids, prompt.question_ids, requests)
    return context


def _same(task, a: str, b: str) -> bool:
    return a == b if task.kind == "choice" else normalize_answer(a) == normalize_answer(b)


def make_record(
    base: dict, task, sample, prompt, *, pipeline: str, prediction: str, nll: float | None,
    full: tuple[str, float | None], nbytes: int, fp16_bytes: int, elements: int, provenance: dict,
    code_entropy_bits: float | None = None,
) -> dict:
    """One results record (``specs/tasks.md``): ``base`` (model, dtype, task, options,
    generation length) plus the sample's prediction, scores, agreement with the full
    cache's prediction ``full[0]``, NLL and ΔNLL against ``full[1]`` (nats per answer
    token), and ``nbytes`` transmitted bytes against the cache's ``elements``;
    ``code_entropy_bits`` (the empirical entropy of the payload's integer codes,
    :mod:`kvcodec.codestats`) goes in per element beside ``bits_per_element``."""
    full_prediction, full_nll = full
    scores = task.score(prediction, sample)
    return {
        **base,
        "sample_id": sample.id,
        "pipeline": pipeline,
        "prediction": prediction,
        "scores": scores,
        "score": scores[task.primary_metric],
        "agree": _same(task, prediction, full_prediction),
        "nll": nll,
        "delta_nll": None if nll is None or full_nll is None else nll - full_nll,
        "bytes": nbytes,
        "fp16_bytes": fp16_bytes,
        "elements": elements,
        "bits_per_element": 8 * nbytes / elements,
        "code_entropy_bits_per_element": None if code_entropy_bits is None else code_entropy_bits / elements,
        "context_tokens": len(prompt.context_ids),
        "provenance": provenance,
    }


@attrs.frozen(eq=False)
class _Pending:
    """A sample whose cache is on its way through the pipelines."""

    sample: object
    prompt: object
    cache: KVCache  # the sender's cache, on the CPU
    full_record: dict | None
    todo: list[str]  # pipeline names (spec text) still to compute
    trips: list  # futures of RoundTrip: identity size, fp16 size, then one per todo pipeline


def evaluate(
    lm,
    task,
    samples: Sequence,
    pipelines: Sequence[Pipeline],
    results: ResultsFile,
    *,
    task_options: dict | None = None,
    settings: Settings = Settings(),
    on_sample: Callable[[int, int], None] | None = None,
) -> RunStats:
    """Run the protocol on ``samples`` for ``pipelines`` and append records to ``results``.

    With ``settings.workers > 0`` the codecs of the next samples run in worker processes
    while the model decodes the current one; records are the same and keep sample order.
    ``on_sample(done_results, total_new_results)`` is called after each sample (progress).
    """
    task_options = dict(task_options or {})
    prov = provenance(lm, settings.seed)
    dtype = prov["dtype"]
    names = [p.describe() for p in pipelines]
    by_name = dict(zip(names, pipelines))
    base = {
        "model": lm.name,
        "model_sha256": lm.sha256,
        "dtype": dtype,
        "task": task.name,
        "task_options": task_options,
        "max_new_tokens": settings.max_new_tokens if task.kind != "choice" else None,
    }
    started = time.perf_counter()
    clock = {"prefill": 0.0, "codec": 0.0, "receiver": 0.0}
    counts = {"written": 0, "skipped": 0, "worked": 0}

    def collect(p: _Pending) -> tuple[list[tuple[str, KVCache, int, float | None]], int]:
        """Wait for a sample's round trips: its rows (pipeline, decoded cache, bytes, code
        entropy), the full-precision row first when it has no record yet, and its FP16 size."""
        trips = [f.result() for f in p.trips]
        full_bytes, fp16_bytes = trips[0].nbytes, trips[1].nbytes
        rows: list[tuple[str, KVCache, int, float | None]] = []
        if p.full_record is None:
            rows.append((FULL, p.cache, full_bytes, None))
        rows.extend((name, trip.cache, trip.nbytes, trip.code_entropy_bits) for name, trip in zip(p.todo, trips[2:]))
        return rows, fp16_bytes

    def write(p: _Pending, rows, fp16_bytes: int, outcomes) -> None:
        sample, prompt = p.sample, p.prompt
        if p.full_record is None:
            full_pred, full_nll = outcomes[0]
        else:
            full_pred, full_nll = p.full_record["prediction"], p.full_record.get("nll")
        elements = p.cache.num_elements
        new = [
            make_record(base, task, sample, prompt, pipeline=name, prediction=pred, nll=nll, full=(full_pred, full_nll),
                        nbytes=nbytes, fp16_bytes=fp16_bytes, elements=elements, provenance=prov,
                        code_entropy_bits=entropy)
            for (name, _, nbytes, entropy), (pred, nll) in zip(rows, outcomes)
        ]
        results.append(new)
        counts["written"] += len(new)
        if on_sample:
            on_sample(counts["written"], len(new))

    def finish(ps: list[_Pending]) -> None:
        t0 = time.perf_counter()
        collected = [collect(p) for p in ps]
        t1 = time.perf_counter()
        clock["codec"] += t1 - t0
        if len(ps) == 1 or task.kind == "choice":
            outcomes = [
                _predict(lm, task, [r[1] for r in rows], p.prompt, LETTERS[: len(p.sample.choices)], settings)
                for p, (rows, _) in zip(ps, collected)
            ]
        else:
            caches = [r[1] for rows, _ in collected for r in rows]
            prompts = [p.prompt for p, (rows, _) in zip(ps, collected) for _ in rows]
            flat = _predict_rows(lm, caches, prompts, settings)
            outcomes, at = [], 0
            for rows, _ in collected:
                outcomes.append(flat[at : at + len(rows)])
                at += len(rows)
        clock["receiver"] += time.perf_counter() - t1
        for p, (rows, fp16_bytes), out in zip(ps, collected, outcomes):
            write(p, rows, fp16_bytes, out)

    group = max(1, settings.samples_per_batch)
    lookahead = 2 if settings.workers else 0
    pending: deque[_Pending] = deque()
    with RoundTripper(settings.workers) as tripper:
        for sample in samples:
            key = lambda pipeline: record_key({**base, "sample_id": sample.id, "pipeline": pipeline})  # noqa: E731
            todo = [n for n in names if results.get(key(n)) is None]
            full_record = results.get(key(FULL))
            counts["skipped"] += len(pipelines) - len(todo) + (full_record is not None)
            if not todo and full_record is not None:
                continue
            counts["worked"] += 1
            t0 = time.perf_counter()
            prompt = task_prompt(lm.tokenizer, task, sample, chat=lm.chat)
            cache = prefill(lm.model, prompt.context_ids).to(device="cpu")
            context = _selector_context(lm, prompt, [by_name[n] for n in todo])
            clock["prefill"] += time.perf_counter() - t0
            specs = ["identity", "fp16", *todo]
            trips = tripper.submit(cache, specs, keep=[False, False] + [True] * len(todo), context=context)
            pending.append(_Pending(sample, prompt, cache, full_record, todo, trips))
            while len(pending) >= lookahead + group:
                finish([pending.popleft() for _ in range(group)])
        while pending:
            finish([pending.popleft() for _ in range(min(group, len(pending)))])
    return RunStats(
        counts["worked"], counts["written"], counts["skipped"], time.perf_counter() - started,
        clock["prefill"], clock["codec"], clock["receiver"],
    )
