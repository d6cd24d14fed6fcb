"""Plots of the transport report from the `kvcodec simulate --json` files in data/.

    python reports/transport/plot.py        (run.sh calls it; no model, no torch)

Writes bandwidth.png (TTFT against bandwidth, one panel per sweep) and loss.png (goodput and
streamed TTFT against loss, median over the seeds with the min–max band) next to this file.
"""

from __future__ import annotations

import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tables import BW_ORDER, MODELS, NAMES, R, TEXT, fmt_bw, load, recipe, rows_by_name, seeds_of  # noqa: E402

COLORS = {"fp16": "#9e9e9e", "int8": "#2171b5", "recipe": "#238b45", "adaptive": "#d94801", TEXT: "#6a3d9a"}
META = {"Software": "kvcodec reports/transport/plot.py"}  # fixed PNG metadata: identical files run to run


def bandwidth_png() -> None:
    fig, axes = plt.subplots(2, 4, figsize=(19, 8.5), sharex=True)
    for ax, (stem, heading) in zip(axes.flat, BW_ORDER):
        d = load(stem)
        model, rec = d["model"], recipe(d["model"])
        xs = [p["x"] / 1e6 for p in d["points"]]
        for name, key in (("fp16", "fp16"), ("int8", "int8"), (rec, "recipe")):
            ys = [rows_by_name(p)[name]["stream_ttft_s"] for p in d["points"]]
            ax.plot(xs, ys, marker="o", ms=3, color=COLORS[key], label=f"{key} stream")
        ys = [rows_by_name(p)[rec]["ttft_s"] for p in d["points"]]
        ax.plot(xs, ys, ls=":", color=COLORS["recipe"], label="recipe, one payload")
        ad = [p["adaptive"] for p in d["points"]]
        ax.plot(xs, [a["ttft_s"] for a in ad], marker="s", ms=4, color=COLORS["adaptive"], label="adaptive")
        miss = [(x, a["ttft_s"]) for x, a in zip(xs, ad) if not a["met"]]
        if miss:
            ax.plot(*zip(*miss), ls="", marker="x", ms=8, color=COLORS["adaptive"], label="adaptive misses target")
        ax.plot(xs, [rows_by_name(p)[TEXT]["ttft_s"] for p in d["points"]], lw=2, color=COLORS[TEXT], label=TEXT)
        ax.axhline(d["target_ttft_s"], color="#cb181d", ls="--", lw=0.8, label="target")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{heading}\n{d['context_tokens']:,} tokens · {d['receiver'].split('/')[-1]}", fontsize=9)
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
    legend: dict = {}
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(l, h)
    handles, labels = list(legend.values()), list(legend)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    for ax in axes[-1]:
        ax.set_xlabel("bandwidth (Mbit/s), 20 ms one way")
    for ax in axes[:, 0]:
        ax.set_ylabel("TTFT (s)")
    fig.suptitle("Simulated TTFT against bandwidth (kvcodec simulate; payload bytes of real caches, "
                 "receiver times from measured profiles)\nrecipe: SmolLM2 " + f"`{recipe('smollm2-135m')}`, "
                 f"Gemma `{recipe('gemma3-270m')}`; adaptive: int8 / recipe / int3 per-channel", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(R / "bandwidth.png", dpi=110, metadata=META)
    plt.close(fig)


def loss_png() -> None:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    for col, model in enumerate(MODELS):
        runs = seeds_of(f"loss-{model}")
        rec = recipe(model)
        xs = [p["x"] * 100 for p in runs[0]["points"]]
        for row, (field, scale, label) in enumerate((("goodput_bps", 1e-6, "goodput of one payload (Mbit/s)"),
                                                     ("stream_ttft_s", 1.0, "TTFT, streamed (s)"))):
            ax = axes[row, col]
            for name, key in (("fp16", "fp16"), ("int8", "int8"), (rec, "recipe")):
                per_x = [[rows_by_name(run["points"][i])[name][field] * scale for run in runs] for i in range(len(xs))]
                med = [statistics.median(v) for v in per_x]
                ax.plot(xs, med, marker="o", ms=3, color=COLORS[key], label=key if key != "recipe" else f"recipe ({rec})")
                ax.fill_between(xs, [min(v) for v in per_x], [max(v) for v in per_x], color=COLORS[key], alpha=0.15)
            if field == "stream_ttft_s":
                per_x = [[rows_by_name(run["points"][i])[TEXT]["ttft_s"] for run in runs] for i in range(len(xs))]
                ax.plot(xs, [statistics.median(v) for v in per_x], lw=2, color=COLORS[TEXT], label=TEXT)
            ax.set_ylabel(label)
            ax.grid(True, lw=0.3, alpha=0.5)
            ax.legend(fontsize=7)
            if row == 0:
                ax.set_title(f"{NAMES[model]} · 100 Mbit/s, 20 ms · {runs[0]['context_tokens']:,} tokens · "
                             f"{runs[0]['receiver'].split('/')[-1]}\nmedian over seeds "
                             f"{', '.join(str(r['seed']) for r in runs)} (band: min–max)", fontsize=9)
            else:
                ax.set_xlabel("loss rate, both directions, independent (%)")
    fig.tight_layout()
    fig.savefig(R / "loss.png", dpi=110, metadata=META)
    plt.close(fig)


def main() -> None:
    bandwidth_png()
    loss_png()
    print(f"wrote {R.relative_to(R.parent.parent) / 'bandwidth.png'}, {R.relative_to(R.parent.parent) / 'loss.png'}")


if __name__ == "__main__":
    main()
