"""Benchmark: lossless entropy coding of quantized KV caches (``ans``, ``zstd``).

The cache is real when it can be: SmolLM2-135M-Instruct prefills a context built from the
paragraphs of one SQuAD 2.0 dev article (``../shared/data/squad-v2-dev.json``, or
``--data-dir``) until it reaches ``--tokens`` tokens. Without the model or the data (or
with ``--synthetic``) it falls back to a synthetic cache of the same shape (30 layers, 3 KV
heads, head_dim 64, Gaussian values with outlier key channels), and says so.

For INT4 and INT3, per token and per channel, each chain is encoded for real
(``kvcodec.encode``) and the table shows:

- ``payload``: ``len()`` of the whole payload in bytes (header, scales, checksums included);
- ``codes``: bytes of the codes alone (the packed codes, the ``ans`` or ``zstd`` streams
  with their tables and headers), summed over layers, keys and values;
- ``b/el``: bits per element of the codes alone; ``H b/el``: the empirical entropy of the
  same codes with the chain's tables (per head, per channel), the bound an ideal coder with
  free tables would reach;
- ``enc x`` / ``dec x``: encode / decode time of the whole payload divided by the time of a
  raw copy of the cache to bytes and back (measured in the same run: the least any
  serializer must do); best of ``--repeat``.

    python benchmarks/bench_entropy.py [--tokens 1024] [--repeat 3] [--synthetic]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

import kvcodec
from kvcodec import KVCache, bitpack, wire
from kvcodec.codec import Codes
from kvcodec.pipeline import Pipeline
from kvcodec_builtins.entropy import entropy_bits
from _caches import synthetic_cache  # benchmarks/_caches.py (run as scripts: this folder is on sys.path)

QUANTIZERS = ("int4", "int4:axis=channel", "int3", "int3:axis=channel")
CODERS = ("", "+ans", "+ans:context=channel", "+zstd", "+cdelta:mode=seq+ans")


def real_cache(tokens: int, data_dir: Path) -> tuple[KVCache, str]:
    """SmolLM2's KV cache of the first SQuAD article's paragraphs, cut at ``tokens``."""
    from kvcodec.generate import prefill
    from kvcodec.models import load_model
    from kvcodec.tasks.files import find_source
    from kvcodec.tasks.squad import SOURCE, read_squad

    paragraphs = read_squad(find_source(data_dir, SOURCE))
    title = paragraphs[0].title
    text = "\n\n".join(p.context for p in paragraphs if p.title == title)
    lm = load_model("smollm2-135m", device="cpu")
    ids = lm.tokenizer(text, add_special_tokens=True)["input_ids"][:tokens]
    cache = prefill(lm.model, ids)
    return cache, f"SmolLM2-135M-Instruct KV cache of SQuAD 2.0 dev article {title!r}, {len(ids)} tokens"


def best(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def raw_copy(cache: KVCache) -> list[bytes]:
    return [t.contiguous().numpy().tobytes() for layer in cache for t in (layer.keys, layer.values)]


def raw_restore(blobs: list[bytes], like: KVCache) -> list[torch.Tensor]:
    tensors = [t for layer in like for t in (layer.keys, layer.values)]
    return [torch.frombuffer(bytearray(b), dtype=t.dtype).reshape(t.shape) for b, t in zip(blobs, tensors)]


def code_bytes(payload: bytes) -> int:
    """Bytes of the final data of every block: packed codes or the entropy streams."""
    total = 0
    for layer in wire.load(payload).layers:
        for enc in (layer.keys, layer.values):
            if isinstance(enc.data, Codes):
                total += bitpack.packed_size(enc.data.data.numel(), enc.data.bits)
            else:
                total += len(enc.data)
    return total


def entropy_of(cache: KVCache, spec: str) -> float:
    """Empirical entropy (bits) of the codes the chain's last CODES stage gives, with the
    context of its ``ans`` stage (per head unless it says channel)."""
    chain = Pipeline.parse(spec).chain_for(0, "k")
    stages = [s for s in chain.stages if s.produces is not kvcodec.Form.BYTES]
    context = next((s.context for s in chain.stages if s.name == "ans"), "head")
    bits = 0.0
    for layer in cache:
        for x in (layer.keys, layer.values):
            for stage in stages:
                x, _ = stage.encode(x)
            bits += entropy_bits(x, context)
    return bits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--synthetic", action="store_true", help="skip the model; use a synthetic cache")
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    ap.add_argument("--data-dir", default=os.environ.get("KVCODEC_DATA_DIR", shared))
    args = ap.parse_args()

    cache, what = None, ""
    if not args.synthetic:
        t0 = time.perf_counter()
        try:
            cache, what = real_cache(args.tokens, Path(args.data_dir))
            what += f" (model load + prefill {time.perf_counter() - t0:.1f} s)"
        except Exception as exc:  # noqa: BLE001 - any failure to get the real cache falls back, and says why
            print(f"real cache unavailable ({type(exc).__name__}: {exc}); using a synthetic one")
    if cache is None:
        cache = synthetic_cache(args.tokens)
        what = f"synthetic cache, {args.tokens} tokens (Gaussian, 4 outlier key channels ×20)"
    n = cache.num_elements
    first = cache.layers[0]
    print(f"{what}\n{cache.num_layers} layers, {first.kv_heads} KV heads, head_dim {first.head_dim}, "
          f"{str(cache.dtype).replace('torch.', '')}: {n:,} elements, {cache.nbytes:,} bytes")

    enc_base, blobs = best(lambda: raw_copy(cache), args.repeat)
    dec_base, _ = best(lambda: raw_restore(blobs, cache), args.repeat)
    print(f"raw-copy baseline: to bytes {enc_base * 1e3:.1f} ms, back {dec_base * 1e3:.1f} ms (best of {args.repeat})\n")
    head = (f"{'chain':38} {'payload':>10} {'codes':>10} {'b/el':>6} {'H b/el':>6} {'vs raw':>7}"
            f" {'enc ms':>8} {'enc x':>7} {'dec ms':>8} {'dec x':>7}")
    print(head)
    print("-" * len(head))
    for q in QUANTIZERS:
        raw_codes, reference = None, None
        for coder in CODERS:
            spec = q + coder
            enc_s, payload = best(lambda: kvcodec.encode(cache, spec), args.repeat)
            dec_s, out = best(lambda: kvcodec.decode(payload), args.repeat)
            if reference is None:
                reference = out
            for a, b in zip(reference, out):  # lossless coders: exactly what the quantizer alone gives
                if not (torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)):
                    raise SystemExit(f"{spec} does not decode to what {q} alone gives")
            codes = code_bytes(payload)
            raw_codes = raw_codes or codes
            h = entropy_of(cache, spec if coder else spec + "+ans")
            print(f"{spec:38} {len(payload):>10,} {codes:>10,} {8 * codes / n:>6.3f} {h / n:>6.3f}"
                  f" {codes / raw_codes:>7.3f} {enc_s * 1e3:>8.1f} {enc_s / enc_base:>7.1f}"
                  f" {dec_s * 1e3:>8.1f} {dec_s / dec_base:>7.1f}")
        print()


if __name__ == "__main__":
    main()
