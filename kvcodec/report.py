"""Results files → per-pipeline summary, markdown table and rate–accuracy plot.

For each (model, task, task options, dtype, pipeline) the summary pairs every record with
the ``"full"`` record of the same sample and reports: n, mean score, % of full with a 95 %
paired bootstrap CI (:func:`kvcodec.scoring.paired_bootstrap_ci`), agreement with the full
cache's answer, mean ΔNLL (nats per answer token), mean transmitted bytes, bytes as a
fraction of FP16 and bits per KV element.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import attrs

from kvcodec.results import FULL
from kvcodec.scoring import paired_bootstrap_ci


@attrs.frozen
class Summary:
    model: str
    task: str
    task_options: str  # JSON
    dtype: str
    pipeline: str
    n: int
    score: float
    full_score: float
    percent: float
    low: float
    high: float
    agreement: float
    delta_nll: float | None
    bytes: float
    ratio_fp16: float
    bits_per_element: float


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def summarize(records: Iterable[dict], *, seed: int = 0) -> list[Summary]:
    """One :class:`Summary` per (model, task, options, dtype, pipeline), baseline first.

    Records without a matching ``"full"`` record are left out (they cannot be paired).
    """
    groups: dict[tuple, dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        key = (r["model"], r["task"], json.dumps(r.get("task_options", {}), sort_keys=True), r["dtype"])
        groups[key][r["pipeline"]][r["sample_id"]] = r
    out = []
    for (model, task, options, dtype), by_pipe in groups.items():
        full = by_pipe.get(FULL, {})
        names = ([FULL] if full else []) + sorted(
            (p for p in by_pipe if p != FULL), key=lambda p: -_mean([r["bytes"] for r in by_pipe[p].values()])
        )
        for name in names:
            ids = [i for i in by_pipe[name] if i in full]
            if not ids:
                continue
            recs = [by_pipe[name][i] for i in ids]
            base = [full[i]["score"] for i in ids]
            mine = [r["score"] for r in recs]
            ci = paired_bootstrap_ci(base, mine, seed=seed)
            dn = [r["delta_nll"] for r in recs if r.get("delta_nll") is not None]
            out.append(
                Summary(
                    model=model,
                    task=task,
                    task_options=options,
                    dtype=dtype,
                    pipeline=name,
                    n=len(ids),
                    score=_mean(mine),
                    full_score=_mean(base),
                    percent=ci.percent,
                    low=ci.low,
                    high=ci.high,
                    agreement=_mean([1.0 if r["agree"] else 0.0 for r in recs]),
                    delta_nll=_mean(dn) if dn else None,
                    bytes=_mean([r["bytes"] for r in recs]),
                    ratio_fp16=_mean([r["bytes"] for r in recs]) / _mean([r["fp16_bytes"] for r in recs]),
                    bits_per_element=_mean([r["bits_per_element"] for r in recs]),
                )
            )
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(rows: Sequence[Summary]) -> str:
    """A markdown table, one line per summary (grouped as given)."""
    head = (
        "| model | task | pipeline | n | score | % of full [95% CI] | agreement | ΔNLL | bytes | × FP16 | bits/elem |\n"
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        opts = json.loads(r.task_options)
        task = r.task + (f" {opts}" if opts else "")
        lines.append(
            f"| {r.model} | {task} | `{r.pipeline}` | {r.n} | {_fmt(r.score, '.3f')} | "
            f"{_fmt(r.percent, '.1f')} [{_fmt(r.low, '.1f')}, {_fmt(r.high, '.1f')}] | {_fmt(r.agreement, '.2f')} | "
            f"{_fmt(r.delta_nll, '+.3f')} | {r.bytes:,.0f} | {_fmt(r.ratio_fp16, '.3f')} | {_fmt(r.bits_per_element, '.2f')} |"
        )
    return head + "\n".join(lines) + "\n"


def plot(rows: Sequence[Summary], path: str | Path, *, title: str = "Rate–accuracy") -> None:
    """Rate–accuracy PNG: x = bytes as % of FP16 (log scale), y = % of full with 95 % CI bars,
    one series per (model, task, options)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple, list[Summary]] = defaultdict(list)
    for r in rows:
        if r.pipeline != FULL:
            series[(r.model, r.task, r.task_options)].append(r)
    fig, ax = plt.subplots(figsize=(9, 6))
    for (model, task, options), pts in series.items():
        pts = sorted(pts, key=lambda r: r.ratio_fp16)
        xs = [100 * r.ratio_fp16 for r in pts]
        ys = [r.percent for r in pts]
        err = [[max(r.percent - r.low, 0) for r in pts], [max(r.high - r.percent, 0) for r in pts]]
        label = f"{model} · {task}" + ("" if options == "{}" else f" {options}")
        ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, label=label, alpha=0.85)
        for x, y, r in zip(xs, ys, pts):
            ax.annotate(r.pipeline, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("transmitted bytes, % of FP16 (log scale)")
    ax.set_ylabel("score, % of full precision (95 % paired bootstrap CI)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


# ---------------------------------------------------------------- layer-wise damage maps
_ONE_LAYER = re.compile(r"^identity L(\d+)(?:\.([kv]))?=(\S+)$")
_TARGET_NAMES = {None: "", "k": " (keys)", "v": " (values)"}


@attrs.frozen
class LayerDamage:
    """One cell of a damage map: the pipeline that codes only ``layer`` with ``stage``
    (keys and values; every other layer full precision)."""

    model: str
    task: str
    stage: str
    layer: int
    summary: Summary


def layer_damage(rows: Sequence[Summary]) -> list[LayerDamage]:
    """The rows of one-layer-at-a-time pipelines (``identity L<i>=<stage>``, as written by
    ``kvcodec sweep --layerwise``, or ``identity L<i>.k=<stage>`` / ``.v`` by ``kvcodec
    diagnose``, whose stage is labelled "(keys)" / "(values)"), sorted by model, stage and layer."""
    out = []
    for r in rows:
        m = _ONE_LAYER.match(r.pipeline)
        if m:
            out.append(LayerDamage(r.model, r.task, m.group(3) + _TARGET_NAMES[m.group(2)], int(m.group(1)), r))
    return sorted(out, key=lambda d: (d.model, d.task, d.stage, d.layer))


def damage_markdown(cells: Sequence[LayerDamage]) -> str:
    """A markdown damage map: one line per layer, per (model, task, stage) group, with
    % of full [95 % CI], agreement and ΔNLL; the most damaging layers by ΔNLL are marked."""
    groups: dict[tuple, list[LayerDamage]] = defaultdict(list)
    for c in cells:
        groups[(c.model, c.task, c.stage)].append(c)
    parts = []
    for (model, task, stage), cs in groups.items():
        dn = [c.summary.delta_nll for c in cs if c.summary.delta_nll is not None]
        total = sum(max(x, 0.0) for x in dn)
        top = sorted(cs, key=lambda c: -(c.summary.delta_nll or 0.0))[:3]
        share = sum(max(c.summary.delta_nll or 0.0, 0.0) for c in top) / total if total > 0 else math.nan
        lines = [
            f"### {model} · {task} · one layer at a time in `{stage}` (n = {cs[0].summary.n})",
            "",
            f"Top 3 layers by ΔNLL: {', '.join(str(c.layer) for c in top)} — "
            f"{_fmt(100 * share, '.0f')} % of the summed positive ΔNLL over {len(cs)} layers.",
            "",
            "| layer | % of full [95% CI] | agreement | ΔNLL |",
            "|---:|---|---:|---:|",
        ]
        for c in cs:
            s = c.summary
            mark = " **◀**" if c in top else ""
            lines.append(
                f"| {c.layer} | {_fmt(s.percent, '.1f')} [{_fmt(s.low, '.1f')}, {_fmt(s.high, '.1f')}] | "
                f"{_fmt(s.agreement, '.2f')} | {_fmt(s.delta_nll, '+.3f')}{mark} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def damage_plot(cells: Sequence[LayerDamage], path: str | Path) -> None:
    """Damage-map PNG: one heat-map row per (model, stage), one column per layer; the colour
    is ΔNLL (nats per answer token) and each cell is labelled with its % of full."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups: dict[tuple, dict[int, Summary]] = defaultdict(dict)
    for c in cells:
        groups[(c.model, c.stage)][c.layer] = c.summary
    keys = list(groups)
    width = max(max(g) for g in groups.values()) + 1
    grid = np.full((len(keys), width), np.nan)
    for i, key in enumerate(keys):
        for layer, s in groups[key].items():
            grid[i, layer] = s.delta_nll if s.delta_nll is not None else np.nan
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * width), 1.2 + 0.9 * len(keys)))
    im = ax.imshow(grid, aspect="auto", cmap="magma_r", vmin=0)
    for i, key in enumerate(keys):
        for layer, s in groups[key].items():
            if not math.isnan(s.percent):
                ax.text(layer, i, f"{s.percent:.0f}", ha="center", va="center", fontsize=6, color="tab:blue")
    ax.set_yticks(range(len(keys)), [f"{m}\n{st}" for m, st in keys], fontsize=8)
    ax.set_xticks(range(width), [str(i) for i in range(width)], fontsize=7)
    ax.set_xlabel("layer coded (all other layers full precision); cell text: % of full score")
    fig.colorbar(im, ax=ax, label="ΔNLL (nats / answer token)")
    ax.set_title("Layer-wise damage map")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def option_plot(rows: Sequence[Summary], option: str, path: str | Path) -> None:
    """% of full (95 % CI bars) against a numeric task option (e.g. needle ``length``), one
    line per (model, pipeline); x on a log-2 scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple, list[tuple[float, Summary]]] = defaultdict(list)
    for r in rows:
        value = json.loads(r.task_options).get(option)
        if r.pipeline != FULL and isinstance(value, (int, float)):
            series[(r.model, r.task, r.pipeline)].append((float(value), r))
    if not series:
        raise ValueError(f"no results have a numeric task option {option!r}")
    fig, ax = plt.subplots(figsize=(9, 6))
    for (model, task, pipeline), pts in sorted(series.items()):
        pts.sort(key=lambda p: p[0])
        xs = [x for x, _ in pts]
        ys = [s.percent for _, s in pts]
        err = [[max(s.percent - s.low, 0) for _, s in pts], [max(s.high - s.percent, 0) for _, s in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{model} · {pipeline}", alpha=0.85)
    ax.set_xscale("log", base=2)
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"task option {option}")
    ax.set_ylabel("score, % of full precision (95 % paired bootstrap CI)")
    ax.set_title(f"{', '.join(sorted({k[1] for k in series}))}: % of full against {option}")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
