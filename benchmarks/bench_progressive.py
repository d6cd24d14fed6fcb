"""Benchmark: reconstruction error of progressive prefixes against plain fixed-width quantizers.

For b = 0 … B it prints the error of the b-plane prefix of a ``prog<B>`` stream (the
b-bit *mid-rise* quantizer, ``specs/progressive.md``) next to the plain ``int<b>``
quantizer (round to nearest, ``scale = range/(2^b − 1)``, same axis and group), with the
bytes of each: the prefix's messages (header and side information included) and the
``int<b>`` wire-format payload; also the bytes of the fixed-width ``prog<b>`` payload,
whose cache is checked to equal the prefix's bit for bit. Errors are over all keys and
values of all layers: relative Frobenius ``‖x − x̂‖ / ‖x‖`` and MSE (float64 sums).

The cache is SmolLM2-135M-Instruct's after prefilling the context of a SQuAD 2.0 sample
(``--data-dir`` or ``KVCODEC_DATA_DIR``; the model comes from the local cache), or a
synthetic cache of the same shape with ``--synthetic`` (or when the data are missing).

    python benchmarks/bench_progressive.py [--bits 8] [--sample 0] [--synthetic]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import kvcodec
from kvcodec import KVCache
from kvcodec.progressive import decode_planes, encode_planes
from _caches import synthetic_cache  # benchmarks/_caches.py (run as scripts: this folder is on sys.path)

SPECS = ("prog{b}", "k=prog{b}:axis=channel v=prog{b}")
INT_WIDTHS = (2, 3, 4, 5, 6, 7, 8, 16)


def real_cache(data_dir: str, sample: int) -> tuple[KVCache, str]:
    from kvcodec.generate import prefill
    from kvcodec.models import load_model
    from kvcodec.prompts import task_prompt
    from kvcodec.tasks import get_task

    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    task = get_task("squad")
    s = task.load(data_dir, n=sample + 1, seed=0)[sample]
    prompt = task_prompt(lm.tokenizer, task, s, chat=lm.chat)
    cache = prefill(lm.model, prompt.context_ids)
    return cache, f"SmolLM2-135M (float32) cache of SQuAD sample {s.id} ({len(prompt.context_ids)} context tokens)"


def errors(ref: KVCache, got: KVCache) -> tuple[float, float]:
    """(relative Frobenius error, MSE) over all keys and values."""
    se = sq = n = 0.0
    for a, b in zip(ref, got):
        for x, y in ((a.keys, b.keys), (a.values, b.values)):
            x64, y64 = x.double(), y.double()
            se += float(((x64 - y64) ** 2).sum())
            sq += float((x64**2).sum())
            n += x.numel()
    return (se / sq) ** 0.5, se / n


def same(a: KVCache, b: KVCache) -> bool:
    return all(torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values) for x, y in zip(a, b))


def table(cache: KVCache, template: str, bits: int) -> str:
    spec = template.format(b=bits)
    t0 = time.perf_counter()
    stream = encode_planes(cache, spec)
    enc_s = time.perf_counter() - t0
    n = cache.num_elements
    fp16 = len(kvcodec.encode(cache, "fp16"))
    lines = [
        f"### `{spec}` as a progressive stream: header {len(stream.messages[0]):,} B, "
        f"{len(stream.messages) - 1} plane messages of {len(stream.messages[1]):,} B; "
        f"whole stream {stream.total_bytes:,} B (FP16 payload: {fp16:,} B); encoded in {enc_s:.2f} s",
        "",
        "| b | prefix bytes | bits/elem | prefix rel. Frob. | prefix MSE | int<b> bytes | int<b> rel. Frob. | int<b> MSE "
        "| prefix / int error | prog<b> payload bytes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in range(0, bits + 1):
        prefix = decode_planes(stream.prefix(b))
        rel, mse = errors(cache, prefix)
        nbytes = stream.bytes_for(b)
        row = f"| {b} | {nbytes:,} | {8 * nbytes / n:.3f} | {rel:.5f} | {mse:.3e} |"
        if b in INT_WIDTHS:
            payload = kvcodec.encode(cache, template.format(b=b).replace("prog", "int"))
            irel, imse = errors(cache, kvcodec.decode(payload))
            row += f" {len(payload):,} | {irel:.5f} | {imse:.3e} | {rel / irel:.3f} |"
        else:
            row += " — | — | — | — |"
        if b >= 1:
            fixed = kvcodec.encode(cache, template.format(b=b))
            if not same(kvcodec.decode(fixed), prefix):
                raise AssertionError(f"the {b}-plane prefix differs from prog{b}")
            row += f" {len(fixed):,} |"
        else:
            row += " — |"
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bits", type=int, default=8, help="B, planes in the stream (1-16)")
    ap.add_argument("--sample", type=int, default=0, help="which SQuAD sample (seed 0 order)")
    ap.add_argument("--data-dir", default=os.environ.get("KVCODEC_DATA_DIR", "../shared/data"))
    ap.add_argument("--synthetic", action="store_true", help="a synthetic cache instead of the model's")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.synthetic or not os.path.isdir(args.data_dir):
        cache, what = synthetic_cache(160), "synthetic cache (30 layers, 3 KV heads, 160 tokens, head_dim 64, 4 outlier key channels)"
    else:
        cache, what = real_cache(args.data_dir, args.sample)
    print(f"{what}: {cache.num_elements:,} elements\n")
    for template in SPECS:
        print(table(cache, template, args.bits))
        print()
    print("prefix = the first b planes of the stream (messages 0..b, framing and side information included);"
          " int<b> = the round-to-nearest quantizer's wire payload; b = 0 decodes every group to its midpoint;"
          " the prog<b> payload decodes to exactly the prefix's cache (checked).")


if __name__ == "__main__":
    main()
