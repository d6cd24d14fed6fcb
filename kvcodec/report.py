"""Results files → per-pipeline summary, markdown table, rate–accuracy plot and frontier.

For each (model, task, task options, dtype, pipeline) the summary pairs every record with
the ``"full"`` record of the same sample and reports: n, mean score, % of full with a 95 %
paired bootstrap CI (:func:`kvcodec.scoring.paired_bootstrap_ci`), agreement with the full
cache's answer, mean ΔNLL (nats per answer token), mean transmitted bytes, bytes as a
fraction of FP16, bits per KV element and, where records carry it, the empirical (order-0)
entropy of the quantizer codes in bits per KV element.

The rate–accuracy frontier (:func:`frontier`) picks, per (model, task, options, dtype), the
cheapest pipeline (fewest mean transmitted bytes) reaching 95 % and 99 % of full, and the
Pareto-optimal pipelines in (bytes, % of full).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import attrs

from kvcodec.results import FULL, options_key
from kvcodec.scoring import paired_bootstrap_ci


@attrs.frozen
class Summary:
    """One pipeline's results against the full cache, over the n samples both have.

    ``score`` and ``full_score`` are mean task scores; ``percent`` (% of full) is
    ``100 · score / full_score`` with the 95 % paired bootstrap CI ``[low, high]`` (% of full);
    ``agreement`` is the fraction of samples whose answer equals the full cache's; ``delta_nll``
    the mean ΔNLL in nats per answer token (None when no record has one); ``bytes`` the mean
    transmitted bytes; ``ratio_fp16`` mean bytes / mean FP16 bytes (a fraction, not %);
    ``bits_per_element`` the mean of ``8 · bytes / elements``; ``code_entropy`` the mean of the
    records' ``code_entropy_bits_per_element`` — the order-0 empirical entropy of the pipeline's
    integer quantizer codes in bits, divided by the same ``elements`` — over the records that
    carry one (None when none does, e.g. in older results files). ``task_options`` is JSON as
    the group's first record spells the options; ``canonical_options`` the same options with
    the task's defaults filled in (:func:`kvcodec.results.options_key`), which is what groups
    records: ``{}`` and ``{"length": 1024}`` are one needle group.
    """

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
    code_entropy: float | None = None
    canonical_options: str | None = None  # JSON, the task's defaults filled in (results.options_key)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


_ENTROPY = "code_entropy_bits_per_element"  # optional record field: bits per KV element


def summarize(records: Iterable[dict], *, seed: int = 0) -> list[Summary]:
    """One :class:`Summary` per (model, task, options, dtype, pipeline), baseline first.

    Records without a matching ``"full"`` record are left out (they cannot be paired). The
    optional record field ``code_entropy_bits_per_element`` (absent or null in older files)
    is averaged into :attr:`Summary.code_entropy` over the records that have a value.
    """
    groups: dict[tuple, dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    shown: dict[tuple, str] = {}  # the options as the group's first record spells them
    for r in records:
        key = (r["model"], r["task"], options_key(r), r["dtype"])
        groups[key][r["pipeline"]][r["sample_id"]] = r
        shown.setdefault(key, json.dumps(r.get("task_options") or {}, sort_keys=True))
    out = []
    for (model, task, canonical, dtype), by_pipe in groups.items():
        options = shown[(model, task, canonical, dtype)]
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
            ent = [r[_ENTROPY] for r in recs if r.get(_ENTROPY) is not None]
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
                    code_entropy=_mean([float(x) for x in ent]) if ent else None,
                    canonical_options=canonical,
                )
            )
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(rows: Sequence[Summary]) -> str:
    """A markdown table, one line per summary (grouped as given): % of full [95 % CI],
    mean transmitted bytes, × FP16 (a fraction) and bits per KV element. A last column
    ``H codes (bit/el)`` — the empirical entropy of the quantizer codes, bits per KV element —
    is added only when some row has one (the cell is blank for rows without)."""
    with_entropy = any(r.code_entropy is not None for r in rows)
    head = (
        "| model | task | pipeline | n | score | % of full [95% CI] | agreement | ΔNLL | bytes | × FP16 | bits/elem |"
        + (" H codes (bit/el) |" if with_entropy else "")
        + "\n|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|"
        + ("---:|" if with_entropy else "")
        + "\n"
    )
    lines = []
    dtypes = _dtypes_per_group(rows)
    for r in rows:
        opts = json.loads(r.task_options)
        task = r.task + (f" {opts}" if opts else "") + _dtype_suffix(r, dtypes)
        lines.append(
            f"| {r.model} | {task} | `{r.pipeline}` | {r.n} | {_fmt(r.score, '.3f')} | "
            f"{_fmt(r.percent, '.1f')} [{_fmt(r.low, '.1f')}, {_fmt(r.high, '.1f')}] | {_fmt(r.agreement, '.2f')} | "
            f"{_fmt(r.delta_nll, '+.3f')} | {r.bytes:,.0f} | {_fmt(r.ratio_fp16, '.3f')} | {_fmt(r.bits_per_element, '.2f')} |"
            + (f" {'' if r.code_entropy is None else _fmt(r.code_entropy, '.2f')} |" if with_entropy else "")
        )
    return head + "\n".join(lines) + "\n"


def _options_of(r: Summary) -> str:
    return r.canonical_options or r.task_options


def _dtypes_per_group(rows: Sequence[Summary]) -> dict[tuple, set[str]]:
    out: dict[tuple, set[str]] = defaultdict(set)
    for r in rows:
        out[(r.model, r.task, _options_of(r))].add(r.dtype)
    return out


def _dtype_suffix(r: Summary, dtypes: dict[tuple, set[str]]) -> str:
    """`` · float32`` when the same model, task and options come in more than one dtype."""
    return f" · {r.dtype}" if len(dtypes[(r.model, r.task, _options_of(r))]) > 1 else ""


def plot(rows: Sequence[Summary], path: str | Path, *, title: str = "Rate–accuracy") -> None:
    """Rate–accuracy PNG: x = bytes as % of FP16 (log scale), y = % of full with 95 % CI bars,
    one series per (model, task, options)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple, list[Summary]] = defaultdict(list)
    dtypes = _dtypes_per_group(rows)
    for r in rows:
        if r.pipeline != FULL:
            series[(r.model, r.task, r.task_options, _dtype_suffix(r, dtypes))].append(r)
    fig, ax = plt.subplots(figsize=(9, 6))
    for (model, task, options, suffix), pts in series.items():
        pts = sorted(pts, key=lambda r: r.ratio_fp16)
        xs = [100 * r.ratio_fp16 for r in pts]
        ys = [r.percent for r in pts]
        err = [[max(r.percent - r.low, 0) for r in pts], [max(r.high - r.percent, 0) for r in pts]]
        label = f"{model} · {task}" + ("" if options == "{}" else f" {options}") + suffix
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


# ---------------------------------------------------------------- rate–accuracy frontier
FRONTIER_LEVELS = (95.0, 99.0)  # % of full that the two frontier picks must reach
_TOL = 1e-9  # % of full: float noise, so a point estimate of exactly 95 % counts as 95 %


@attrs.frozen
class FrontierPoint:
    """One pipeline on the rate–accuracy plane: ``percent`` (% of full) with its 95 % paired
    bootstrap CI ``[low, high]`` (% of full), ``bytes`` (mean transmitted bytes),
    ``fp16_percent`` (bytes as % of FP16, i.e. ``100 · ratio_fp16``), ``bits_per_element``
    (bits per KV element) and ``code_entropy`` (code entropy, bits per KV element, or None)."""

    pipeline: str
    percent: float
    low: float
    high: float
    bytes: float
    fp16_percent: float
    bits_per_element: float
    code_entropy: float | None = None

    @classmethod
    def of(cls, s: Summary) -> FrontierPoint:
        return cls(s.pipeline, s.percent, s.low, s.high, s.bytes, 100 * s.ratio_fp16, s.bits_per_element, s.code_entropy)


@attrs.frozen
class FrontierPicks:
    """The rate–accuracy frontier of one (model, task, task options, dtype) group, the
    ``"full"`` baseline left out.

    ``at_95`` / ``at_99``: the pipeline with the fewest mean transmitted bytes whose point
    estimate of % of full is ≥ 95 / ≥ 99 (None if none reaches it; among equal bytes the
    higher % of full, then the spec text, wins). ``pareto``: the Pareto-optimal pipelines,
    fewest bytes first — those that no other pipeline matches or beats on both bytes (fewer
    or equal) and % of full (higher or equal) while being strictly better on one. ``n``: the
    number of pipelines considered (those with a finite % of full).
    """

    model: str
    task: str
    task_options: str  # JSON
    dtype: str
    n: int
    at_95: FrontierPoint | None
    at_99: FrontierPoint | None
    pareto: tuple[FrontierPoint, ...]

    def pick(self, level: float) -> FrontierPoint | None:
        """The pick for ``level`` (95 or 99, % of full)."""
        return {95.0: self.at_95, 99.0: self.at_99}[float(level)]


def _cheapest(points: Sequence[FrontierPoint], level: float) -> FrontierPoint | None:
    ok = [p for p in points if p.percent >= level - _TOL]
    return min(ok, key=lambda p: (p.bytes, -p.percent, p.pipeline)) if ok else None


def _pareto(points: Sequence[FrontierPoint]) -> tuple[FrontierPoint, ...]:
    def dominated(p: FrontierPoint) -> bool:
        return any(
            q.bytes <= p.bytes and q.percent >= p.percent and (q.bytes < p.bytes or q.percent > p.percent)
            for q in points
        )

    return tuple(sorted((p for p in points if not dominated(p)), key=lambda p: (p.bytes, p.percent, p.pipeline)))


def frontier(rows: Sequence[Summary]) -> dict[tuple[str, str, str, str], FrontierPicks]:
    """The rate–accuracy frontier per (model, task, task options JSON, dtype) group, in the
    order the groups first appear in ``rows``: the cheapest pipelines (mean transmitted bytes)
    reaching 95 % and 99 % of full by the point estimate, and the Pareto set in (bytes, % of
    full). The ``"full"`` baseline and rows whose % of full is not finite (a full mean score
    of 0) are left out; a group with no other pipeline is left out."""
    groups: dict[tuple[str, str, str, str], list[FrontierPoint]] = defaultdict(list)
    for r in rows:
        if r.pipeline != FULL and math.isfinite(r.percent):
            groups[(r.model, r.task, r.task_options, r.dtype)].append(FrontierPoint.of(r))
    return {
        key: FrontierPicks(*key, n=len(pts), at_95=_cheapest(pts, 95.0), at_99=_cheapest(pts, 99.0), pareto=_pareto(pts))
        for key, pts in groups.items()
    }


def _group_title(model: str, task: str, options: str, dtype: str) -> str:
    opts = json.loads(options)
    return f"{model} · {task}" + (f" {opts}" if opts else "") + f" · {dtype}"


def _pick_line(level: float, p: FrontierPoint | None, n: int) -> str:
    head = f"- smallest ≥ {level:g} % of full: "
    if p is None:
        return head + f"none — no pipeline of the {n} reaches {level:g} % of full (point estimate)"
    return (
        head + f"`{p.pipeline}` — {_fmt(p.percent, '.1f')} % [{_fmt(p.low, '.1f')}, {_fmt(p.high, '.1f')}], "
        f"{p.bytes:,.0f} bytes ({_fmt(p.fp16_percent, '.1f')} % of FP16)"
    )


def frontier_markdown(rows: Sequence[Summary]) -> str:
    """A markdown section per (model, task, options, dtype) group (:func:`frontier`): the
    cheapest pipeline reaching 95 % and 99 % of full — % of full [95 % CI], mean transmitted
    bytes and bytes as % of FP16 — then the Pareto set as a table (% of full [95 % CI],
    bytes, % of FP16, bits per KV element, and the code entropy in bits per KV element when
    known). Groups with no pipeline besides ``"full"`` get no section."""
    parts = []
    for key, fp in frontier(rows).items():
        with_entropy = any(p.code_entropy is not None for p in fp.pareto)
        lines = [
            f"### {_group_title(*key)}: rate–accuracy frontier ({fp.n} pipelines)",
            "",
            _pick_line(95.0, fp.at_95, fp.n),
            _pick_line(99.0, fp.at_99, fp.n),
            "",
            "Picks compare the point estimate of % of full with the level; the 95 % paired bootstrap CI "
            "shows how far the sample supports it.",
            "",
            "Pareto set (no other pipeline has fewer or equal bytes and a higher or equal % of full):",
            "",
            "| pipeline | % of full [95% CI] | bytes | % of FP16 | bits/elem |" + (" H codes (bit/el) |" if with_entropy else ""),
            "|---|---|---:|---:|---:|" + ("---:|" if with_entropy else ""),
        ]
        for p in fp.pareto:
            lines.append(
                f"| `{p.pipeline}` | {_fmt(p.percent, '.1f')} [{_fmt(p.low, '.1f')}, {_fmt(p.high, '.1f')}] | "
                f"{p.bytes:,.0f} | {_fmt(p.fp16_percent, '.1f')} | {_fmt(p.bits_per_element, '.2f')} |"
                + (f" {'' if p.code_entropy is None else _fmt(p.code_entropy, '.2f')} |" if with_entropy else "")
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def frontier_plot(rows: Sequence[Summary], path: str | Path) -> None:
    """Rate–accuracy frontier PNG, one panel per (model, task, options, dtype) group side by
    side: every pipeline (``"full"`` left out) as a point with its 95 % CI bar; x = transmitted
    bytes as % of FP16 (log scale), y = % of full. The Pareto frontier is a step line, 95 %
    and 99 % of full are dashed lines, and only the Pareto points and the two picks are
    labelled with their spec text.

    Raises:
        ValueError: when no group has a pipeline besides ``"full"``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fronts = frontier(rows)
    if not fronts:
        raise ValueError("no pipelines besides the full baseline to put on a frontier")
    points: dict[tuple, list[Summary]] = defaultdict(list)
    for r in rows:
        if r.pipeline != FULL and math.isfinite(r.percent):
            points[(r.model, r.task, r.task_options, r.dtype)].append(r)
    fig, axes = plt.subplots(1, len(fronts), figsize=(6.5 * len(fronts), 5.5), squeeze=False, sharey=True)
    for ax, (key, fp) in zip(axes[0], fronts.items()):
        pts = sorted(points[key], key=lambda r: r.ratio_fp16)
        xs = [100 * r.ratio_fp16 for r in pts]
        ys = [r.percent for r in pts]

        def bar(d: float) -> float:
            return max(d, 0.0) if math.isfinite(d) else 0.0

        err = [[bar(r.percent - r.low) for r in pts], [bar(r.high - r.percent) for r in pts]]
        ax.errorbar(xs, ys, yerr=err, fmt="o", ms=4, capsize=2, color="tab:blue", alpha=0.55, lw=0.8,
                    label="pipeline (95 % CI)")
        px = [p.fp16_percent for p in fp.pareto]
        py = [p.percent for p in fp.pareto]
        ax.step(px, py, where="post", color="tab:red", lw=1.4, label="Pareto frontier")
        ax.plot(px, py, "o", color="tab:red", ms=5)
        for level in FRONTIER_LEVELS:
            ax.axhline(level, color="grey", lw=0.9, ls="--")
            ax.text(1.0, level, f" {level:g} %", transform=ax.get_yaxis_transform(), fontsize=7, va="center",
                    color="grey")
        picks: dict[str, list[str]] = defaultdict(list)
        for level in FRONTIER_LEVELS:
            p = fp.pick(level)
            if p is not None:
                picks[p.pipeline].append(f"≥ {level:g} %")
        # a Pareto point has no pipeline up and to its left (none cheaper and better): label it there;
        # the last one (the best % of full) has none up and to its right either, and the pick may be left of it
        for i, p in enumerate(fp.pareto):
            if p.pipeline not in picks:
                last = i == len(fp.pareto) - 1
                ax.annotate(p.pipeline, (p.fp16_percent, p.percent), fontsize=6, color="tab:red",
                            ha="left" if last else "right", xytext=(5 if last else -5, 4), textcoords="offset points")
        for j, (name, levels) in enumerate(picks.items()):
            p = next(q for q in (fp.at_95, fp.at_99) if q is not None and q.pipeline == name)
            ax.plot([p.fp16_percent], [p.percent], "*", color="tab:green", ms=13, zorder=5)
            ax.annotate(f"{' & '.join(levels)} pick:\n{name}", (p.fp16_percent, p.percent), fontsize=7,
                        fontweight="bold", color="darkgreen", xytext=(-10, 28 + 24 * j), textcoords="offset points",
                        ha="right", arrowprops=dict(arrowstyle="->", color="darkgreen", lw=0.8))
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 2.0, max(xs) * 1.6)  # room for the labels left of the cheapest points
        ax.set_xlabel("transmitted bytes, % of FP16 (log scale)")
        ax.set_title(_group_title(*key), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("score, % of full precision (95 % paired bootstrap CI)")
    fig.suptitle("Rate–accuracy frontier: cheapest pipeline at ≥ 95 % and ≥ 99 % of full")
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


def option_series(rows: Sequence[Summary], option: str) -> dict[tuple, list[tuple[float, Summary]]]:
    """The lines of :func:`option_plot`: ``(model, task, pipeline, dtype suffix)`` → ``[(option
    value, summary)]`` over the rows whose (canonical) options give ``option`` a number.

    Raises:
        ValueError: when no row does (a bool option is not a number here).
    """
    series: dict[tuple, list[tuple[float, Summary]]] = defaultdict(list)
    dtypes = _dtypes_per_group(rows)
    for r in rows:
        value = json.loads(_options_of(r)).get(option)
        if r.pipeline != FULL and isinstance(value, (int, float)) and not isinstance(value, bool):
            series[(r.model, r.task, r.pipeline, _dtype_suffix(r, dtypes))].append((float(value), r))
    if not series:
        raise ValueError(f"no results have a numeric task option {option!r}")
    return series


def option_plot(rows: Sequence[Summary], option: str, path: str | Path) -> None:
    """% of full (95 % CI bars) against a numeric task option (e.g. needle ``length``), one
    line per (model, pipeline, and dtype where the rows hold several); x on a log-2 scale.

    Raises:
        ValueError: as :func:`option_series`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = option_series(rows, option)
    fig, ax = plt.subplots(figsize=(9, 6))
    for (model, task, pipeline, suffix), pts in sorted(series.items()):
        pts.sort(key=lambda p: p[0])
        xs = [x for x, _ in pts]
        ys = [s.percent for _, s in pts]
        err = [[max(s.percent - s.low, 0) for _, s in pts], [max(s.high - s.percent, 0) for _, s in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{model} · {pipeline}{suffix}", alpha=0.85)
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
