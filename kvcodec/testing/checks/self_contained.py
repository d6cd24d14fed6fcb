"""Check ``self_contained``: a fresh process decodes the payloads identically."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from kvcodec.cache import KVCache

from ..subject import Subject
from ._common import describe_cache, NotApplicable, same_bits, Unencodable, _decode_own, _encode, _fail


def _importable(cls: type) -> bool:
    return "<locals>" not in cls.__qualname__ and cls.__module__ != "__main__"


def check_self_contained(subject: Subject | Sequence[Subject], caches: list[KVCache], timeout: float = 300.0) -> None:
    """A fresh Python process (another ``PYTHONHASHSEED``, no state shared with this one)
    decodes each payload to bit-identical tensors and encodes each cache to the same
    bytes: everything the decoder needs travels in the payload, and encoding does not
    depend on the process (hash order, addresses, global state).

    ``subject`` may be a list: one process then checks them all (starting Python and
    torch costs seconds).

    Raises:
        ContractViolation: for the first subject that breaks the clause.
        NotApplicable: if a codec registered on the spot cannot be imported by name, or
            no cache could be encoded.
    """
    c = "self_contained"
    subjects = [subject] if isinstance(subject, Subject) else list(subject)
    jobs, sent = [], []
    for sub in subjects:
        for cls in sub.extra_codecs:
            if not _importable(cls):
                raise NotApplicable(f"{cls.__qualname__} is not importable by name from another process")
        items, mine = [], []
        for cache in caches:
            try:
                data = _encode(sub, cache)
            except Unencodable:
                continue
            mine.append((cache, data, _decode_own(c, sub, data, cache)))
            items.append({"cache": cache_to_dict(cache), "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)})
        if not items:
            raise NotApplicable(f"{sub.spec!r}: no cache could be encoded")
        jobs.append(
            {
                "spec": sub.spec,
                "extra": [[cls.__module__, cls.__qualname__] for cls in sub.extra_codecs],
                "context": sub.context,
                "items": items,
            }
        )
        sent.append(mine)
    with tempfile.TemporaryDirectory(prefix="kvcodec-contract-") as tmp:
        job, result = Path(tmp, "job.pt"), Path(tmp, "result.pt")
        torch.save({"jobs": jobs}, job)
        env = dict(os.environ)
        env["PYTHONHASHSEED"] = str(random.Random(" ".join(s.spec for s in subjects)).randrange(1, 2**31))
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        proc = subprocess.run(
            [sys.executable, "-m", "kvcodec.testing._fresh", str(job), str(result)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise _fail(c, subjects[0], "the fresh process failed: " + " | ".join(tail))
        got = torch.load(result, weights_only=True)
    for sub, mine, results in zip(subjects, sent, got):
        for (cache, data, out), res in zip(mine, results):
            where = describe_cache(cache)
            if isinstance(res["decoded"], str):
                raise _fail(c, sub, f"a fresh process could not decode the payload of {where}: {res['decoded']}")
            fresh = cache_from_dict(res["decoded"])
            if not all(same_bits(a.keys, b.keys) and same_bits(a.values, b.values) for a, b in zip(out, fresh)):
                raise _fail(
                    c,
                    sub,
                    f"a fresh process decoded the payload of {where} to other values: the payload does not carry"
                    " everything decode needs (state kept in the process?)",
                )
            if isinstance(res["encoded"], str):
                raise _fail(c, sub, f"a fresh process could not encode {where}: {res['encoded']}")
            if bytes(res["encoded"].numpy().tobytes()) != data:
                raise _fail(c, sub, f"a fresh process encoded {where} to other bytes (encoding depends on the process)")


def cache_to_dict(cache: KVCache) -> dict:
    """A :class:`KVCache` as plain tensors, ints and strings (``torch.load(weights_only=True)`` reads it)."""
    return {
        "layers": [
            {
                "keys": l.keys.cpu(),
                "values": l.values.cpu(),
                "positions": l.positions.cpu(),
                "seen_tokens": l.seen_tokens,
                "layer_type": l.layer_type,
                "sliding_window": l.sliding_window,
            }
            for l in cache
        ]
    }


def cache_from_dict(d: dict) -> KVCache:
    """Inverse of :func:`cache_to_dict`."""
    from kvcodec.cache import LayerKV

    return KVCache(
        LayerKV(l["keys"], l["values"], l["positions"], l["seen_tokens"], l["layer_type"], l["sliding_window"])
        for l in d["layers"]
    )
