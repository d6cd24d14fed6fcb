"""Round trips of one KV cache through many pipelines — encode → bytes → decode — in this
process or in a pool of worker processes.

The evaluation harness sends every sample's cache through every pipeline for real. On a
GPU the receiver's batched decoding is quick and the codec work (many small tensors, a
Python-level wire format) becomes the bottleneck, so :class:`RoundTripper` can spread it
over worker processes (``spawn``-started, one torch thread each) that work on the next
samples while the model decodes the current one. Results are the same either way: a
worker runs exactly :func:`round_trip`.

Caches travel between processes as raw arrays (:func:`cache_to_arrays` /
:func:`cache_from_arrays`: each tensor's bytes as a uint8 numpy array plus its dtype and
shape); the bytes a pipeline transmits are still ``len()`` of the payload it produced. A
job's ``context`` (what cache stages read, e.g. the sender's attention statistics for
token selectors, :mod:`kvcodec.attention`) travels the same way
(:func:`context_to_arrays` / :func:`context_from_arrays`: dicts, lists and tuples of
tensors, numbers and strings).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from typing import Any, Sequence

import attrs
import numpy as np
import torch

from kvcodec import api, codestats, wire
from kvcodec.cache import KVCache, LayerKV

__all__ = [
    "RoundTrip",
    "RoundTripper",
    "round_trip",
    "cache_to_arrays",
    "cache_from_arrays",
    "context_to_arrays",
    "context_from_arrays",
]


@attrs.frozen(eq=False)
class RoundTrip:
    """One pipeline's round trip of one cache.

    Attributes:
        spec: the pipeline as spec-string text.
        nbytes: ``len()`` of the encoded payload (bytes on the wire, side information and
            headers included).
        cache: the decoded cache (CPU, the dtype it was sent in), or ``None`` when only the
            size was asked for.
        code_entropy_bits: order-0 empirical entropy of the payload's integer codes in
            bits (:func:`kvcodec.codestats.code_entropy_bits`); ``None`` when nothing is
            quantized or only the size was asked for.
    """

    spec: str
    nbytes: int
    cache: KVCache | None
    code_entropy_bits: float | None = None


def round_trip(cache: KVCache, spec: str, keep: bool = True, context: dict[str, Any] | None = None) -> RoundTrip:
    """Encode ``cache`` with the pipeline ``spec`` into wire bytes and decode them back (CPU).

    Args:
        cache: the sender's cache, any device.
        spec: pipeline spec string (``specs/spec-grammar.md``).
        keep: decode the payload (``False``: only measure its length).
        context: extra inputs for cache stages (e.g. ``question_ids``).

    Raises:
        SpecError, CodecError: as :func:`kvcodec.api.encode`.
    """
    payload = api.encode_payload(cache, spec, **(context or {}))
    data = wire.dump(payload)
    if not keep:
        return RoundTrip(spec, len(data), None)
    return RoundTrip(spec, len(data), api.decode(data), codestats.code_entropy_bits(payload))


# ---------------------------------------------------------------------- process transport
def _tensor_to_array(t: torch.Tensor) -> tuple[np.ndarray, str, tuple[int, ...]]:
    t = t.detach().to("cpu").contiguous()
    return t.reshape(-1).view(torch.uint8).numpy(), str(t.dtype).replace("torch.", ""), tuple(t.shape)


def _tensor_from_array(item: tuple[np.ndarray, str, tuple[int, ...]]) -> torch.Tensor:
    array, dtype, shape = item
    return torch.from_numpy(np.ascontiguousarray(array)).view(getattr(torch, dtype)).reshape(shape)


def cache_to_arrays(cache: KVCache) -> list[dict[str, Any]]:
    """A :class:`KVCache` as plain data (numpy arrays, str, int) for another process."""
    return [
        {
            "keys": _tensor_to_array(layer.keys),
            "values": _tensor_to_array(layer.values),
            "positions": _tensor_to_array(layer.positions),
            "seen_tokens": layer.seen_tokens,
            "layer_type": layer.layer_type,
            "sliding_window": layer.sliding_window,
        }
        for layer in cache
    ]


def cache_from_arrays(layers: list[dict[str, Any]]) -> KVCache:
    """Inverse of :func:`cache_to_arrays` (CPU tensors)."""
    return KVCache(
        LayerKV(
            _tensor_from_array(d["keys"]),
            _tensor_from_array(d["values"]),
            _tensor_from_array(d["positions"]),
            d["seen_tokens"],
            d["layer_type"],
            d["sliding_window"],
        )
        for d in layers
    )


@attrs.frozen(eq=False)
class _Array:
    """A tensor of a job's context on its way to a worker (see :func:`_tensor_to_array`)."""

    item: tuple[np.ndarray, str, tuple[int, ...]]


def context_to_arrays(context: Any) -> Any:
    """``context`` with every tensor replaced by its raw array, for another process: dicts
    (string keys), lists and tuples are walked; ``None``, bools, numbers and strings pass.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(context, torch.Tensor):
        return _Array(_tensor_to_array(context))
    if isinstance(context, dict):
        return {str(k): context_to_arrays(v) for k, v in context.items()}
    if isinstance(context, (list, tuple)):
        return type(context)(context_to_arrays(v) for v in context)
    if context is None or isinstance(context, (bool, int, float, str)):
        return context
    raise TypeError(f"a round-trip context cannot carry a {type(context).__name__} to a worker process")


def context_from_arrays(data: Any) -> Any:
    """Inverse of :func:`context_to_arrays` (CPU tensors)."""
    if isinstance(data, _Array):
        return _tensor_from_array(data.item)
    if isinstance(data, dict):
        return {k: context_from_arrays(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(context_from_arrays(v) for v in data)
    return data


def _worker_init() -> None:
    torch.set_num_threads(1)


def _worker_job(arrays, jobs: list[tuple[str, bool]], context) -> list[tuple[str, int, Any, float | None]]:
    cache = cache_from_arrays(arrays)
    context = context_from_arrays(context)
    out = []
    for spec, keep in jobs:
        try:
            result = round_trip(cache, spec, keep, context)
        except Exception as exc:  # noqa: BLE001 - raised again by that spec's future
            out.append((spec, None, exc, None))
            continue
        arrays = None if result.cache is None else cache_to_arrays(result.cache)
        out.append((result.spec, result.nbytes, arrays, result.code_entropy_bits))
    return out


def _split(future: cf.Future, count: int) -> list[cf.Future]:
    """Futures for each item of a worker job's list result."""
    outs = [cf.Future() for _ in range(count)]

    def done(f: cf.Future) -> None:
        try:
            items = f.result()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the futures
            for out in outs:
                out.set_exception(exc)
            return
        for out, (spec, nbytes, arrays, entropy) in zip(outs, items):
            if nbytes is None:
                out.set_exception(arrays)
                continue
            try:
                out.set_result(RoundTrip(spec, nbytes, None if arrays is None else cache_from_arrays(arrays), entropy))
            except BaseException as exc:  # noqa: BLE001
                out.set_exception(exc)

    future.add_done_callback(done)
    return outs


class RoundTripper:
    """Runs :func:`round_trip` jobs, in this process (``workers=0``) or in ``workers``
    worker processes.

    ``submit`` returns one :class:`concurrent.futures.Future` of :class:`RoundTrip` per
    spec; in-process jobs are already done when it returns. Use as a context manager, or
    call :meth:`close`.

    Raises:
        ValueError: if ``workers`` is negative.
    """

    def __init__(self, workers: int = 0):
        if workers < 0:
            raise ValueError(f"workers must be ≥ 0 (got {workers})")
        self.workers = workers
        self._pool = (
            cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)
            if workers
            else None
        )

    def submit(
        self, cache: KVCache, specs: Sequence[str], keep: Sequence[bool] | None = None, context: dict[str, Any] | None = None
    ) -> list[cf.Future]:
        """Start one round trip of ``cache`` per spec (``keep[i]``: decode it too);
        ``context`` goes to the cache stages of every spec."""
        keep = [True] * len(specs) if keep is None else list(keep)
        if self._pool is None:
            futures = []
            for spec, k in zip(specs, keep):
                f: cf.Future = cf.Future()
                try:
                    f.set_result(round_trip(cache, spec, k, context))
                except Exception as exc:  # noqa: BLE001 - re-raised by f.result()
                    f.set_exception(exc)
                futures.append(f)
            return futures
        # the cache crosses to each worker once: specs are dealt round-robin, one job per worker
        arrays = cache_to_arrays(cache)
        shipped = context_to_arrays(context)
        jobs = [list(range(i, len(specs), self.workers)) for i in range(min(self.workers, len(specs)))]
        futures: list[cf.Future] = [None] * len(specs)  # type: ignore[list-item]
        for idx in jobs:
            chunk = self._pool.submit(_worker_job, arrays, [(specs[i], keep[i]) for i in idx], shipped)
            for i, f in zip(idx, _split(chunk, len(idx))):
                futures[i] = f
        return futures

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "RoundTripper":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
