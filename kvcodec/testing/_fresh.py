"""The fresh process of the ``self_contained`` check::

    python -m kvcodec.testing._fresh JOB RESULT

JOB (written by :func:`kvcodec.testing.checks.check_self_contained` with ``torch.save``)
holds one job per subject: the spec, stage classes to register by module and qualified
name, the encode context, and caches with the payloads the parent process wrote for
them. This process decodes every payload of every job first, then encodes every cache,
and saves both (or the error text) to RESULT.
"""

from __future__ import annotations

import importlib
import sys

import torch


def _import(module: str, qualname: str) -> type:
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def main(argv: list[str]) -> int:
    from kvcodec import api
    from kvcodec.spec import parse
    from kvcodec.testing.checks import cache_from_dict, cache_to_dict
    from kvcodec.testing.subject import registry_with

    job_path, result_path = argv
    jobs = torch.load(job_path, weights_only=True)["jobs"]
    out = []
    for job in jobs:
        registry = registry_with(*(_import(m, q) for m, q in job["extra"]))
        # every payload is decoded before anything is encoded here, so that nothing an
        # encoder might leave behind in this process can help a decoder
        decoded: list[object] = []
        for item in job["items"]:
            try:
                decoded.append(cache_to_dict(api.decode(item["payload"].numpy().tobytes(), registry=registry)))
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                decoded.append(f"{type(exc).__name__}: {exc}")
        out.append(decoded)
    results = []
    for job, decoded in zip(jobs, out):
        registry = registry_with(*(_import(m, q) for m, q in job["extra"]))
        pipeline = parse(job["spec"], registry)
        mine = []
        for item, dec in zip(job["items"], decoded):
            try:
                data = api.encode(cache_from_dict(item["cache"]), pipeline, **job["context"])
                encoded: object = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                encoded = f"{type(exc).__name__}: {exc}"
            mine.append({"encoded": encoded, "decoded": dec})
        results.append(mine)
    torch.save(results, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
