"""Benchmark: how fast the SimPy link model simulates a transfer.

Prints simulated packets per second for payloads of 1k, 10k and 100k packets, and the
ratio of the simulation's wall time to the closed form's (the baseline, measured in the
same run). Run: ``python benchmarks/bench_link.py``.
"""

import time

from kvcodec_sim import Link, simulate_transfer


def main() -> None:
    link = Link.parse("10Gbps", latency="10ms")
    print(f"{'packets':>8} {'payload MB':>11} {'sim s':>8} {'packets/s':>11} {'closed-form s':>14} {'sim / closed form':>18} {'rel. diff':>10}")
    for packets in (1_000, 10_000, 100_000):
        nbytes = packets * link.payload_per_packet
        t0 = time.perf_counter()
        result = simulate_transfer(link, nbytes)
        sim_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(1000):
            closed = link.closed_form_time(nbytes)
        closed_s = (time.perf_counter() - t0) / 1000
        diff = abs(result.delivery_time_s - closed) / closed
        print(f"{packets:>8} {nbytes / 1e6:>11.1f} {sim_s:>8.3f} {packets / sim_s:>11,.0f} {closed_s:>14.2e} {sim_s / closed_s:>18,.0f} {diff:>10.1e}")


if __name__ == "__main__":
    main()
