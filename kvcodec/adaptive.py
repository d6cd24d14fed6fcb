"""Adaptive progressive transmission: ask for more bit planes only when the receiver is unsure
(``specs/progressive.md`` §7).

The sender has a progressive stream (:func:`kvcodec.progressive.encode_planes`): a header
with the side information, then bit planes, most significant first. The receiver

1. asks for the header and the first ``start`` planes and decodes that prefix;
2. appends its question and looks at the **confidence** of its first answer token: the
   top-1 softmax probability ``p1 = max softmax(logits)`` of the first generated token
   (for a multiple-choice task, of the softmax over the choice letters' logits);
3. if ``p1 ≥ threshold`` it answers from this cache; otherwise it asks for the next plane
   message and goes back to 2, until it has all B planes (then it answers regardless).

The bytes a sample costs are the ``len()`` of the messages it received (the receiver's
requests travel the other way and are not counted).

:func:`adaptive_answer` runs the protocol for one cache and question, message by message.
:func:`evaluate_adaptive` evaluates it on a task: every prefix decode is deterministic, so
decoding each reachable prefix ``start … B`` once, running them through the receiver as
one batch and then applying the policy per sample to the recorded confidences gives the
answers, planes and bytes the interactive protocol would have produced (up to the
batch-invariance of the model's kernels, the same caveat as every batched row of
:mod:`kvcodec.harness`). It writes records in the format of :mod:`kvcodec.harness`
(pipelines ``prog8@4`` for fixed 4-plane prefixes, ``prog8 adaptive:p1>=0.5,start=3`` for
a policy), so ``kvcodec report`` summarizes them next to fixed-width pipelines.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Callable, Mapping, Sequence

import attrs
import torch

from kvcodec import api
from kvcodec.cache import KVCache
from kvcodec.errors import DecodeError
from kvcodec.generate import answer_nll, choice_logits, greedy, greedy_batch, prefill
from kvcodec.harness import LETTERS, Settings, make_record
from kvcodec.pipeline import Pipeline
from kvcodec.progressive import ProgressiveDecoder, ProgressiveStream, encode_planes, plane_schedule, stream_bits
from kvcodec.prompts import task_prompt
from kvcodec.results import FULL, ResultsFile, provenance, record_key

__all__ = [
    "CONFIDENCE",
    "Policy",
    "Decision",
    "decide",
    "top1_probability",
    "AdaptiveAnswer",
    "adaptive_answer",
    "stream_label",
    "evaluate_adaptive",
    "AdaptiveRunStats",
]

#: name of the confidence signal, as it appears in pipeline names
CONFIDENCE = "p1"


def top1_probability(logits: torch.Tensor) -> torch.Tensor:
    """The confidence signal: ``max softmax(logits)`` over the last dimension (float32,
    computed in float32; shape ``logits.shape[:-1]``), in [0, 1]."""
    return torch.softmax(logits.float(), dim=-1).amax(-1)


def _threshold_ok(_inst, attr, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1] (got {value})", attr)


@attrs.frozen
class Policy:
    """When the receiver stops asking for planes.

    Attributes:
        threshold: accept a prefix when the first answer token's top-1 probability is
            ≥ ``threshold`` (0: always the first prefix; 1: in practice all planes).
        start: planes asked for before the first check, ≥ 0 (rounded up to the next
            message boundary of the stream; capped at B).
    """

    threshold: float = attrs.field(converter=float, validator=_threshold_ok)
    start: int = attrs.field(default=1, validator=attrs.validators.ge(0))

    def describe(self) -> str:
        """The policy as pipeline-name text: ``adaptive:p1>=0.5,start=3``."""
        return f"adaptive:{CONFIDENCE}>={self.threshold:g},start={self.start}"

    @classmethod
    def parse(cls, text: str) -> "Policy":
        """Inverse of :meth:`describe`; also accepts ``p1>=0.5,start=3`` and ``0.5,3``.

        Raises:
            ValueError: text that is not a policy.
        """
        m = re.fullmatch(r"\s*(?:adaptive:)?(?:p1>=)?([0-9.eE+-]+)\s*(?:,\s*(?:start=)?(\d+))?\s*", text)
        if not m:
            raise ValueError(f"not an adaptive policy: {text!r} (expected e.g. 'p1>=0.5,start=3')")
        return cls(float(m.group(1)), int(m.group(2)) if m.group(2) else 1)


@attrs.frozen
class Decision:
    """The outcome of a policy on one sample.

    Attributes:
        planes: planes the answer was decoded from.
        trail: ``(planes, confidence)`` of every check, in order (the last is the accepted
            prefix, or the full stream when no prefix was confident enough).
    """

    planes: int
    trail: tuple[tuple[int, float], ...]


def decide(
    policy: Policy,
    reachable: Sequence[int],
    confidence: Callable[[int], float] | Mapping[int, float],
) -> Decision:
    """Apply ``policy`` given the confidence of each decodable prefix.

    Args:
        policy: threshold and start.
        reachable: plane counts the stream can be cut at, ascending, ending at B (e.g.
            :attr:`ProgressiveStream.reachable`, ``(0, 1, …, 8)``).
        confidence: planes → confidence of the first answer token decoded from that
            prefix (a mapping, or a function called only for the prefixes checked).

    Returns:
        :class:`Decision`: the first prefix at or after ``start`` whose confidence is
        ≥ ``threshold``, else the full stream.

    Raises:
        ValueError: if ``reachable`` is empty or not ascending.
    """
    steps = list(reachable)
    if not steps or any(a >= b for a, b in zip(steps, steps[1:])):
        raise ValueError(f"reachable plane counts must be ascending and non-empty (got {steps})")
    get = confidence.__getitem__ if isinstance(confidence, Mapping) else confidence
    start = min(policy.start, steps[-1])
    trail = []
    for p in (p for p in steps if p >= start):
        c = float(get(p))
        trail.append((p, c))
        if c >= policy.threshold:
            break
    return Decision(trail[-1][0], tuple(trail))


# ----------------------------------------------------------------------------- one question
@attrs.frozen
class AdaptiveAnswer:
    """What :func:`adaptive_answer` returns.

    Attributes:
        text: the decoded answer; token_ids: its tokens.
        planes: planes the answer was decoded from.
        messages: messages received (header included).
        bytes: ``len()`` of the messages received.
        confidences: ``(planes, p1)`` of every check, in order.
    """

    text: str
    token_ids: list[int]
    planes: int
    messages: int
    bytes: int
    confidences: tuple[tuple[int, float], ...]


def adaptive_answer(
    lm,
    stream: ProgressiveStream | Sequence[bytes],
    question_ids: Sequence[int],
    threshold: float,
    start_planes: int = 1,
    *,
    max_new_tokens: int = 32,
    registry=None,
) -> AdaptiveAnswer:
    """Answer ``question_ids`` from a progressive stream, asking for planes only while unsure.

    Messages are taken from ``stream`` one at a time, as a receiver would request them:
    the header and the first ``start_planes`` planes, then one more message whenever the
    first answer token's top-1 probability is below ``threshold``. Each check prefills the
    question and decodes one token; the accepted prefix then decodes the whole answer
    (greedy, up to ``max_new_tokens``).

    Args:
        lm: a loaded model (:func:`kvcodec.models.load_model`); the cache is decoded onto
            its device.
        stream: a :class:`ProgressiveStream` or its messages.
        question_ids: the receiver's tokens (:func:`kvcodec.prompts.split_prompt`).
        threshold: confidence threshold in [0, 1].
        start_planes: planes before the first check (rounded up to a message boundary).

    Raises:
        DecodeError: a message of the stream is rejected.
        ValueError: a bad threshold or start.
    """
    policy = Policy(threshold, start_planes)
    messages = stream.messages if isinstance(stream, ProgressiveStream) else tuple(stream)
    if not messages:
        raise DecodeError("no messages: a progressive stream starts with its header")
    dec = ProgressiveDecoder(registry=registry)
    dec.feed(messages[0])

    def next_message() -> None:
        if dec.messages >= len(messages):
            raise DecodeError(f"the stream ended after {dec.messages} messages, before its {dec.bits} planes")
        dec.feed(messages[dec.messages])

    while dec.planes < min(policy.start, dec.bits):
        next_message()
    trail = []
    while True:
        cache = dec.cache(lm.model.device)
        probe = greedy(lm.model, lm.tokenizer, cache, list(question_ids), max_new_tokens=1)
        c = float(top1_probability(probe.first_logits))
        trail.append((dec.planes, c))
        if c >= policy.threshold or dec.complete:
            break
        next_message()
    gen = greedy(lm.model, lm.tokenizer, cache, list(question_ids), max_new_tokens=max_new_tokens)
    return AdaptiveAnswer(gen.text, gen.token_ids, dec.planes, dec.messages, dec.bytes_received, tuple(trail))


# ----------------------------------------------------------------------------- evaluation
def stream_label(spec: Pipeline | str, planes_per_message: int | Sequence[int] = 1) -> str:
    """The stream's part of a pipeline name: the spec's canonical text (``prog8``), with the
    message schedule in brackets when it is not one plane per message (``prog8[3+1+1+1+1+1]``)."""
    text = api.as_pipeline(spec).describe()
    if planes_per_message == 1:
        return text
    if isinstance(planes_per_message, int):
        return f"{text}[{planes_per_message}/msg]"
    return f"{text}[{'+'.join(str(int(c)) for c in planes_per_message)}]"


@attrs.frozen
class AdaptiveRunStats:
    """What :func:`evaluate_adaptive` did.

    Attributes:
        samples: samples that needed work; results: records written; skipped: records
            already in the results file; seconds: wall time.
        planes: pipeline name of each adaptive policy → planes it chose, one per sample
            written in this run.
    """

    samples: int
    results: int
    skipped: int
    seconds: float
    planes: dict[str, list[int]]


def _receive(lm, task, caches: list[KVCache], prompt, letters: str, settings: Settings) -> list[tuple[str, float | None, float]]:
    """(prediction, answer NLL, confidence) for every cache, as batches of ``settings.batch_size``."""
    out: list[tuple[str, float | None, float]] = []
    for i in range(0, len(caches), settings.batch_size):
        chunk = caches[i : i + settings.batch_size]
        try:
            batches = [KVCache.stack(chunk)]
        except ValueError:  # different geometries: one at a time
            batches = chunk
        for batch in batches:
            batch = batch.to(device=lm.model.device)
            if task.kind == "choice":
                logits = choice_logits(lm.model, lm.tokenizer, batch, prompt.question_ids, letters)
                preds = [letters[int(row.argmax())] for row in logits]
                conf = top1_probability(logits).tolist()
            else:
                gens = greedy_batch(
                    lm.model, lm.tokenizer, batch, prompt.question_ids, max_new_tokens=settings.max_new_tokens
                )
                preds = [g.text for g in gens]
                conf = [float(top1_probability(g.first_logits)) for g in gens]
            if prompt.answer_ids:
                nlls = answer_nll(lm.model, batch, prompt.question_ids, prompt.answer_ids).tolist()
            else:
                nlls = [None] * len(preds)
            out.extend(zip(preds, nlls, conf))
    return out


def evaluate_adaptive(
    lm,
    task,
    samples: Sequence,
    results: ResultsFile,
    *,
    spec: Pipeline | str = "prog8",
    policies: Sequence[Policy] = (Policy(0.5, 3),),
    fixed_planes: Sequence[int] | None = None,
    planes_per_message: int | Sequence[int] = 1,
    task_options: dict | None = None,
    settings: Settings = Settings(),
    on_sample: Callable[[int, int], None] | None = None,
) -> AdaptiveRunStats:
    """Evaluate adaptive policies and fixed prefixes of a progressive stream on ``samples``.

    For every sample the sender prefills the context and encodes its cache with
    :func:`~kvcodec.progressive.encode_planes` (``spec``, ``planes_per_message``); every
    prefix that a row needs is decoded once; the full-precision cache (unless its
    ``"full"`` record exists) and those prefixes run through the receiver as one batch
    (greedy answers with their first-token logits, and the gold answer's NLL). Rows:

    - ``"{label}@{k}"`` for each ``k`` of ``fixed_planes`` (default: every reachable
      plane count ≥ 1): the answer from the first ``k`` planes; bytes = the prefix's;
    - ``"{label} {policy}"`` for each policy: :func:`decide` on the prefixes'
      confidences; prediction, NLL and bytes of the prefix it stops at;

    where ``label`` is :func:`stream_label`. Records have exactly the keys of
    :mod:`kvcodec.harness` records, are appended to ``results``, and a rerun skips the
    ones already there.

    Raises:
        SpecError, CodecError: a spec that is not a progressive stream (see
            :func:`~kvcodec.progressive.encode_planes`).
        ValueError: a fixed plane count the stream cannot be cut at.
    """
    task_options = dict(task_options or {})
    prov = provenance(lm, settings.seed)
    label = stream_label(spec, planes_per_message)
    bits = stream_bits(spec)
    reachable = [0]
    for count in plane_schedule(bits, planes_per_message):
        reachable.append(reachable[-1] + count)
    ks = list(fixed_planes) if fixed_planes is not None else reachable[1:]
    for k in ks:
        if k not in reachable:
            raise ValueError(f"the stream {label} cannot be cut at {k} planes (reachable: {reachable})")
    fixed_rows = {f"{label}@{k}": k for k in ks}
    policy_rows = {f"{label} {p.describe()}": p for p in policies}
    base = {
        "model": lm.name,
        "model_sha256": lm.sha256,
        "dtype": prov["dtype"],
        "task": task.name,
        "task_options": task_options,
        "max_new_tokens": settings.max_new_tokens if task.kind != "choice" else None,
    }
    started = time.perf_counter()
    written = skipped = worked = 0
    chosen: dict[str, list[int]] = defaultdict(list)
    for sample in samples:
        key = lambda pipeline: record_key({**base, "sample_id": sample.id, "pipeline": pipeline})  # noqa: E731
        full_record = results.get(key(FULL))
        todo_fixed = {n: k for n, k in fixed_rows.items() if results.get(key(n)) is None}
        todo_policy = {n: p for n, p in policy_rows.items() if results.get(key(n)) is None}
        skipped += len(fixed_rows) - len(todo_fixed) + len(policy_rows) - len(todo_policy) + (full_record is not None)
        if not todo_fixed and not todo_policy and full_record is not None:
            continue
        worked += 1
        # sender: prefill the context, encode the stream
        prompt = task_prompt(lm.tokenizer, task, sample, chat=lm.chat)
        cache = prefill(lm.model, prompt.context_ids).to(device="cpu")
        stream = encode_planes(cache, spec, planes_per_message=planes_per_message)
        # receiver: every prefix a row needs, decoded once, incrementally
        needed = set(todo_fixed.values())
        if todo_policy:
            first = min(min(p.start, bits) for p in todo_policy.values())
            needed |= {p for p in reachable if p >= first}
        prefixes: list[tuple[int, KVCache]] = []
        dec = ProgressiveDecoder()
        for message in stream.messages:
            dec.feed(message)
            if dec.planes in needed:
                prefixes.append((dec.planes, dec.cache()))
        caches = ([cache] if full_record is None else []) + [c for _, c in prefixes]
        outcomes = _receive(lm, task, caches, prompt, LETTERS[: len(sample.choices)], settings)
        if full_record is None:
            full_pred, full_nll, _ = outcomes.pop(0)
        else:
            full_pred, full_nll = full_record["prediction"], full_record.get("nll")
        by_planes = {p: o for (p, _), o in zip(prefixes, outcomes)}
        fp16_bytes = len(api.encode(cache, "fp16"))
        elements = cache.num_elements

        def record(name: str, pred: str, nll: float | None, nbytes: int) -> dict:
            return make_record(base, task, sample, prompt, pipeline=name, prediction=pred, nll=nll,
                               full=(full_pred, full_nll), nbytes=nbytes, fp16_bytes=fp16_bytes, elements=elements,
                               provenance=prov)

        new = []
        if full_record is None:
            new.append(record(FULL, full_pred, full_nll, len(api.encode(cache, "identity"))))
        for name, k in todo_fixed.items():
            pred, nll, _ = by_planes[k]
            new.append(record(name, pred, nll, stream.bytes_for(k)))
        confidences = {p: o[2] for p, o in by_planes.items()}
        for name, policy in todo_policy.items():
            d = decide(policy, [p for p in reachable if p in by_planes], confidences)
            pred, nll, _ = by_planes[d.planes]
            chosen[name].append(d.planes)
            new.append(record(name, pred, nll, stream.bytes_for(d.planes)))
        results.append(new)
        written += len(new)
        if on_sample:
            on_sample(written, len(new))
    return AdaptiveRunStats(worked, written, skipped, time.perf_counter() - started, dict(chosen))
