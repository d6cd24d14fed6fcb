"""kvcodec diagnose: damage map → recipe, and the recipe file."""

import math

import pytest

from kvcodec.diagnose import Cell, cell_specs, cells_from, damage_table, diagnose, read_recipe, stage_spec, write_recipe
from kvcodec.pipeline import Pipeline
from kvcodec.report import Summary


def _summary(pipeline, dnll, percent=100.0):
    return Summary("m", "squad", "{}", "bfloat16", pipeline, 10, 0.5, 0.5, percent, percent - 5, percent + 5,
                   0.5, dnll, 100.0, 0.25, 4.0)


def _cells(damages: dict[tuple[int, str], float], layers=10, base=0.001):
    out = []
    for i in range(layers):
        for t in "kv":
            d = damages.get((i, t), base)
            out.append(Cell(i, t, _summary(f"identity L{i}.{t}=int4", d)))
    return out


def test_cell_specs_cover_every_layer_and_target_and_parse():
    specs = cell_specs(3, "int4:axis=channel")
    assert specs == [f"identity L{i}.{t}=int4:axis=channel" for i in range(3) for t in "kv"]
    for spec in specs:
        p = Pipeline.parse(spec)
        p.check(3)
    rows = [_summary(s, 0.1) for s in specs] + [_summary("int4", 0.3), _summary("identity L0.k=int3", 1.0)]
    cells = cells_from(rows, "int4:axis=channel")
    assert [(c.layer, c.target) for c in cells] == [(i, t) for i in range(3) for t in "kv"]


def test_concentrated_damage_protects_the_flagged_cells():
    d = diagnose(_cells({(5, "k"): 0.5, (11 % 10, "v"): 0.7, (6, "k"): 0.2}), "int4", threshold=0.05)
    assert d.concentrated
    assert {(c.layer, c.target) for c in d.flagged} == {(5, "k"), (6, "k"), (1, "v")}
    assert d.recipe == "int4 L5-6.k=int8 L1.v=int8"
    p = Pipeline.parse(d.recipe)
    assert p.chain_for(5, "k").describe() == "int8" and p.chain_for(5, "v").describe() == "int4"
    assert p.chain_for(1, "v").describe() == "int8" and p.chain_for(0, "k").describe() == "int4"
    assert d.top_share > 0.9


def test_spread_damage_raises_the_width():
    damages = {(i, t): 0.06 for i in range(10) for t in "kv"}
    d = diagnose(_cells(damages), "int4:axis=channel", threshold=0.05)
    assert not d.concentrated and d.recipe == "int5:axis=channel"
    # flagged few but carrying too little of the damage: also spread
    damages = {(i, t): 0.04 for i in range(10) for t in "kv"}
    damages[(3, "k")] = 0.06
    d = diagnose(_cells(damages), "int4", threshold=0.05)
    assert len(d.flagged) == 1 and not d.concentrated and d.recipe == "int5"


def test_no_damage_keeps_the_stage_and_int8_is_the_ceiling():
    assert diagnose(_cells({}), "int4").recipe == "int4"
    d = diagnose(_cells({(i, t): 1.0 for i in range(10) for t in "kv"}), "int8")
    assert d.recipe == "int8"


def test_bad_arguments():
    with pytest.raises(ValueError, match="no diagnosis cells"):
        diagnose([], "int4")
    with pytest.raises(ValueError):
        diagnose(_cells({}), "int4", max_protected=0)


def test_recipe_file_round_trips(tmp_path):
    d = diagnose(_cells({(2, "v"): 0.9}), "int4")
    path = tmp_path / "recipe.txt"
    write_recipe(path, d, ["kvcodec diagnose --model m"])
    text = path.read_text()
    assert text.startswith("# kvcodec diagnose") and read_recipe(text) == [d.recipe] == ["int4 L2.v=int8"]


def test_damage_table_marks_flagged_cells_and_handles_nan():
    cells = _cells({(2, "v"): 0.9})
    cells[0] = Cell(0, "k", _summary("identity L0.k=int4", 0.0, percent=math.nan))
    table = damage_table(diagnose(cells, "int4"))
    assert "| 2 |" in table and "+0.900 **◀**" in table and "— [—, —]" in table


def test_stage_spec():
    assert stage_spec(4, "token") == "int4" and stage_spec(3, "channel") == "int3:axis=channel"
