"""Benchmark: how fast selective-repeat ARQ simulates 100,000 packets over lossy channels.

For a lossless channel, 1 % and 10 % independent loss, Gilbert–Elliott bursty loss and
30 % loss in both directions, prints the wall time, simulated packets per second and the
ratio of that wall time to the lossless SimPy ``simulate_transfer`` of the same payload,
measured in the same run (the baseline), plus what the simulation reports: delivery time,
goodput, transmissions per packet, timeouts and fast retransmits.

Run: ``python benchmarks/bench_arq.py [--packets 100000] [--repeat 1]`` (best of ``repeat``).
"""

import argparse
import time

from kvcodec_sim import Channel, Link, simulate_arq, simulate_transfer

CHANNELS = [
    ("lossless", "10Gbps"),
    ("1% loss", "10Gbps,loss=1%"),
    ("10% loss", "10Gbps,loss=10%"),
    ("GE 1%/25%", "10Gbps,ge=0.01/0.25"),
    ("30% loss", "10Gbps,loss=30%"),
]


def best_of(repeat: int, run):
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    link = Link.parse("10Gbps", latency="10ms")
    nbytes = args.packets * link.payload_per_packet
    base_s, base = best_of(args.repeat, lambda: simulate_transfer(link, nbytes))
    print(f"{args.packets:,} packets, {nbytes / 1e6:.1f} MB payload, 10 Gbit/s, 10 ms one way, MTU 1500 B")
    print(f"baseline: SimPy simulate_transfer (lossless, no ACKs) {base_s:.3f} s, "
          f"{args.packets / base_s:,.0f} packets/s, delivery {base.delivery_time_s:.4f} s")
    header = (f"{'channel':<11} {'spec':<22} {'wall s':>7} {'packets/s':>10} {'/ SimPy':>8} {'delivery s':>11} "
              f"{'goodput Mb/s':>13} {'tx/packet':>10} {'timeouts':>9} {'fast rtx':>9}")
    print(header)
    for name, spec in CHANNELS:
        channel = Channel.parse(spec, latency="10ms")
        wall_s, result = best_of(args.repeat, lambda: simulate_arq(channel, nbytes, seed=1))
        print(f"{name:<11} {spec:<22} {wall_s:>7.3f} {args.packets / wall_s:>10,.0f} {wall_s / base_s:>8.2f} "
              f"{result.delivery_time_s:>11.4f} {result.goodput_bps / 1e6:>13,.1f} "
              f"{result.transmissions_per_packet:>10.4f} {result.timeouts:>9,} {result.fast_retransmits:>9,}")


if __name__ == "__main__":
    main()
