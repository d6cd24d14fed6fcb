"""Benchmark: encode and decode speed of pipelines on a SmolLM2-135M-shaped KV cache.

The cache is synthetic (30 layers, 3 KV heads, head_dim 64, float32, with outlier
channels) so the benchmark needs no model. The baseline, measured in the same run, is
copying the raw cache into bytes (``tensor.numpy().tobytes()`` for every tensor): it is
the least any serializer must do. Prints MB/s of input and the ratio to the baseline.

    python benchmarks/bench_codecs.py [--tokens 1536] [--repeat 3]
"""

import argparse
import time

import kvcodec
from _caches import synthetic_cache  # benchmarks/_caches.py (run as scripts: this folder is on sys.path)

PIPELINES = ("identity", "fp16", "int8", "int4", "int4:axis=channel", "k=int4:axis=channel v=int4",
             "int3:group=32", "int2:axis=channel,group=32", "sign")


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1536)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cache = synthetic_cache(args.tokens)
    mb = cache.nbytes / 1e6
    base_s, _ = best(lambda: [t.numpy().tobytes() for l in cache for t in (l.keys, l.values)], args.repeat)
    print(f"cache: {mb:.1f} MB float32, {cache.num_elements:,} elements; baseline raw copy to bytes: "
          f"{mb / base_s:,.0f} MB/s ({base_s * 1e3:.1f} ms)")
    print(f"{'pipeline':32} {'bytes':>11} {'bits/el':>8} {'enc MB/s':>9} {'enc/base':>9} {'dec MB/s':>9} {'dec/base':>9}")
    for spec in PIPELINES:
        enc_s, payload = best(lambda: kvcodec.encode(cache, spec), args.repeat)
        dec_s, _ = best(lambda: kvcodec.decode(payload), args.repeat)
        print(f"{spec:32} {len(payload):>11,} {8 * len(payload) / cache.num_elements:>8.3f} {mb / enc_s:>9,.0f} "
              f"{base_s / enc_s:>9.3f} {mb / dec_s:>9,.0f} {base_s / dec_s:>9.3f}")


if __name__ == "__main__":
    main()
