"""Layer-wise diagnosis: which layers of a model need protection, as a verified recipe.

``kvcodec diagnose`` (``specs/diagnose.md``) quantizes one layer at a time — keys and values
separately — at a chosen width, keeps every other layer at full precision, and measures the
damage of each (layer, keys|values) cell with the evaluation protocol of
:mod:`kvcodec.harness`. The damage of a cell is its mean ΔNLL (nats per answer token,
teacher-forced NLL of the first gold answer against the full-precision cache), a continuous
measure that small samples resolve better than a score.

From the damage map it derives a **recipe**, a pipeline spec string:

- damage **concentrated** in a few cells (the cells above ``threshold`` are at most
  ``max_protected`` of all cells, and together carry at least ``concentration`` of the
  summed positive damage): the uniform width everywhere, and the cells above the
  threshold protected (sent with ``protect_with``, INT8 by default, lossless in the
  research behind kvcodec);
- damage **spread** out: no protection helps, so the uniform width is raised by one bit.

The recipe is written to a text file (``#`` comment lines, then the spec on one line) that
``kvcodec eval --pipeline-file`` and ``kvcodec simulate --pipeline-file`` read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import attrs

from kvcodec.report import Summary, _fmt

TARGETS = ("k", "v")
_CELL = re.compile(r"^identity L(\d+)\.([kv])=(\S+)$")


def stage_spec(bits: int, axis: str) -> str:
    """The uniform quantizer stage diagnosed, e.g. ``int4`` or ``int4:axis=channel``."""
    return f"int{bits}" + (":axis=channel" if axis == "channel" else "")


def cell_specs(num_layers: int, stage: str) -> list[str]:
    """One pipeline per (layer, keys|values): ``identity L<i>.k=<stage>`` … in layer order."""
    return [f"identity L{i}.{t}={stage}" for i in range(num_layers) for t in TARGETS]


@attrs.frozen
class Cell:
    """The damage of coding one layer's keys or values with the diagnosed stage."""

    layer: int
    target: str  # "k" or "v"
    summary: Summary

    @property
    def damage(self) -> float:
        """Mean ΔNLL, nats per answer token (0 when the task has no gold answer)."""
        return self.summary.delta_nll or 0.0


@attrs.frozen
class Diagnosis:
    """The damage map of one model and task, and the recipe derived from it.

    Attributes:
        stage: the diagnosed stage (``int4`` …).
        cells: one :class:`Cell` per (layer, target), layer order.
        flagged: cells whose damage exceeds ``threshold``.
        concentrated: whether damage counts as concentrated (see the module docstring).
        top_share: share of the summed positive damage carried by the flagged cells
            (``nan`` when there is no positive damage).
        recipe: the recommended pipeline spec.
        reason: one sentence saying why.
    """

    stage: str
    threshold: float
    cells: tuple[Cell, ...]
    flagged: tuple[Cell, ...]
    concentrated: bool
    top_share: float
    recipe: str
    reason: str


def cells_from(rows: Sequence[Summary], stage: str) -> list[Cell]:
    """The diagnosis cells among ``rows`` (pipelines ``identity L<i>.<k|v>=<stage>``)."""
    out = []
    for r in rows:
        m = _CELL.match(r.pipeline)
        if m and m.group(3) == stage:
            out.append(Cell(int(m.group(1)), m.group(2), r))
    return sorted(out, key=lambda c: (c.layer, c.target))


def _raise_width(stage: str) -> str:
    m = re.match(r"^int(\d+)(.*)$", stage)
    bits = int(m.group(1)) if m else 8
    return f"int{min(bits + 1, 8)}{m.group(2) if m else ''}"


def _layers(indices: Sequence[int]) -> str:
    """``0,3-5`` from [0, 3, 4, 5]."""
    spans, run = [], []
    for i in sorted(set(indices)):
        if run and i == run[-1] + 1:
            run.append(i)
        else:
            if run:
                spans.append(run)
            run = [i]
    if run:
        spans.append(run)
    return ",".join(str(s[0]) if len(s) == 1 else f"{s[0]}-{s[-1]}" for s in spans)


def diagnose(
    cells: Sequence[Cell],
    stage: str,
    *,
    threshold: float = 0.05,
    max_protected: float = 0.25,
    concentration: float = 0.6,
    protect_with: str = "int8",
) -> Diagnosis:
    """Turn a damage map into a recipe (module docstring).

    Args:
        cells: the (layer, target) cells of one model and task.
        stage: the diagnosed stage, the recipe's uniform width.
        threshold: ΔNLL (nats per answer token) above which a cell needs protection.
        max_protected: largest share of cells that may be protected for damage to count
            as concentrated.
        concentration: smallest share of the summed positive damage the flagged cells
            must carry for damage to count as concentrated.
        protect_with: the chain protected cells are sent with.

    Raises:
        ValueError: if ``cells`` is empty or a parameter is out of range.
    """
    if not cells:
        raise ValueError("no diagnosis cells (pipelines 'identity L<i>.k=<stage>') in the results")
    if not (0 < max_protected <= 1 and 0 < concentration <= 1 and threshold >= 0):
        raise ValueError("need threshold ≥ 0, 0 < max_protected ≤ 1 and 0 < concentration ≤ 1")
    flagged = tuple(c for c in cells if c.damage > threshold)
    total = sum(max(c.damage, 0.0) for c in cells)
    share = sum(c.damage for c in flagged) / total if total > 0 else float("nan")
    concentrated = bool(flagged) and len(flagged) <= max_protected * len(cells) and share >= concentration
    if not flagged:
        recipe, reason = stage, f"no cell's ΔNLL exceeds {threshold:g}: {stage} everywhere"
    elif concentrated:
        rules = []
        for target in TARGETS:
            layers = [c.layer for c in flagged if c.target == target]
            if layers:
                rules.append(f"L{_layers(layers)}.{target}={protect_with}")
        recipe = " ".join([stage, *rules])
        reason = (
            f"damage is concentrated: {len(flagged)} of {len(cells)} cells exceed ΔNLL {threshold:g} and carry "
            f"{100 * share:.0f} % of the summed damage; they are sent with {protect_with}"
        )
    else:
        recipe = _raise_width(stage)
        reason = (
            f"damage is spread out: {len(flagged)} of {len(cells)} cells exceed ΔNLL {threshold:g}, carrying "
            f"{100 * share:.0f} % of the summed damage; the uniform width is raised to {recipe}"
        )
    return Diagnosis(stage, threshold, tuple(cells), flagged, concentrated, share, recipe, reason)


def write_recipe(path: str | Path, diagnosis: Diagnosis, header: Sequence[str] = ()) -> None:
    """Write the recipe file: ``#`` comment lines (``header``, the reason), then the spec."""
    lines = [f"# {h}" for h in header] + [f"# {diagnosis.reason}", diagnosis.recipe]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_recipe(text: str) -> list[str]:
    """The specs of a recipe / pipeline file: one per line, ``#`` starts a comment."""
    specs = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [s for s in specs if s]


def damage_table(diagnosis: Diagnosis) -> str:
    """Markdown damage map: one line per layer, keys and values side by side."""
    by_layer: dict[int, dict[str, Cell]] = {}
    for c in diagnosis.cells:
        by_layer.setdefault(c.layer, {})[c.target] = c
    flagged = {(c.layer, c.target) for c in diagnosis.flagged}
    lines = [
        "| layer | keys: % of full [95% CI] | keys ΔNLL | values: % of full [95% CI] | values ΔNLL |",
        "|---:|---|---:|---|---:|",
    ]
    for layer in sorted(by_layer):
        cols = []
        for t in TARGETS:
            c = by_layer[layer].get(t)
            if c is None:
                cols += ["—", "—"]
                continue
            s = c.summary
            mark = " **◀**" if (layer, t) in flagged else ""
            cols += [f"{_fmt(s.percent, '.1f')} [{_fmt(s.low, '.1f')}, {_fmt(s.high, '.1f')}]", f"{c.damage:+.3f}{mark}"]
        lines.append(f"| {layer} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"
