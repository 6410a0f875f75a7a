"""`make bench-full`'s extra files add defense columns to `make bench`'s grid, and nothing else; `make bench`'s
power files add seeds to cells of its grid, and nothing else.

Each ``scenarios/*-more.yaml`` includes a main grid file and changes its defense column; its cells are read
beside the main file's undefended runs (the verdict pairs them by regime and seed: ``Scenario.regime``). A cell whose method, task, model,
attacks or federation differ from every cell of its main file pairs with nothing it measured: session 16
found three quarters of ``table4-more.yaml``'s 168 cells in settings the main grid never runs (its copy of
the matrix had drifted), and RLHF's poisoning cells in a regime the main grid had left.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from bench.spec.scenario import Scenario, load

ROOT = Path(__file__).resolve().parent.parent
EXTRA = {
    "scenarios/table4-more.yaml": "scenarios/table4.yaml",
    "scenarios/table4-poisoning-more.yaml": "scenarios/table4-poisoning.yaml",
    "scenarios/table4-poisoning-rlhf-more.yaml": "scenarios/table4-poisoning-rlhf.yaml",
    "scenarios/table4-closed-more.yaml": "scenarios/table4-closed.yaml",
}
"""Each extra file of ``make bench-full`` and the main grid file whose columns it extends."""


POWER = {
    "scenarios/table4-poisoning-power-krum.yaml": "scenarios/table4-poisoning.yaml",
    "scenarios/table4-poisoning-power-coordinate.yaml": "scenarios/table4-poisoning.yaml",
    "scenarios/table4-poisoning-rlhf-power-krum.yaml": "scenarios/table4-poisoning-rlhf.yaml",
}
"""Each power file of ``make bench`` (more seeds for the cells whose column's minimum detectable effect needs
them) and the main grid file whose cells it runs."""


def _make_list(name: str) -> list[str]:
    """A ``NAME ?= ...`` file list of the Makefile, with ``$(BENCH_SCENARIOS)`` spelled out."""
    makefile = (ROOT / "Makefile").read_text()
    lists = dict(re.findall(r"^(\w+) \?= (.*)$", makefile, flags=re.MULTILINE))
    return lists[name].replace("$(BENCH_SCENARIOS)", lists["BENCH_SCENARIOS"]).split()


def _setting(scenario: Scenario) -> str:
    """Everything a cell measures under, except its defenses (and whether it draws the learning curve)."""
    fields = dataclasses.asdict(scenario)
    federation = {k: v for k, v in fields["federation"].items() if k != "utility_curve"}
    kept = {k: fields[k] for k in ("tier", "model", "task", "method", "attacks", "seeds", "device")}
    return json.dumps({**kept, "federation": federation}, sort_keys=True, default=str)


def test_bench_full_runs_every_extra_file_beside_its_main_file():
    full, bench = _make_list("FULL_SCENARIOS"), _make_list("BENCH_SCENARIOS")
    assert set(full) - set(bench) == set(EXTRA)
    assert set(EXTRA.values()) <= set(bench)


@pytest.mark.parametrize("extra", sorted(EXTRA))
def test_each_extra_cell_is_a_main_cell_with_another_defense(extra):
    main = {_setting(s): s for s in load(str(ROOT / EXTRA[extra]))}
    cells = load(str(ROOT / extra))
    astray = [s.name for s in cells if _setting(s) not in main]
    assert not astray, f"{len(astray)} of {len(cells)} cells of {extra} match no cell of {EXTRA[extra]}: {astray[:2]}"
    main_defenses = {s.defense_label for s in main.values()}
    assert not {s.defense_label for s in cells} & main_defenses, "an extra file reruns a column the main grid has"


def test_every_defended_cell_has_an_undefended_twin_of_its_regime():
    # Table 4 pairs a defended run with the undefended run of its regime and seed (``Scenario.regime``): a defended
    # cell with no undefended twin anywhere in the grid is compared with nothing
    scenarios = [s for path in _make_list("FULL_SCENARIOS") for s in load(str(ROOT / path))]
    undefended = {s.regime for s in scenarios if not s.defenses}
    orphans = [s.name for s in scenarios if s.defenses and s.regime not in undefended]
    assert not orphans, f"{len(orphans)} defended cells without an undefended twin: {orphans[:2]}"


def test_bench_runs_every_power_file_after_its_main_file():
    bench = _make_list("BENCH_SCENARIOS")
    for power, main in POWER.items():
        assert power in bench and bench.index(main) < bench.index(power), (power, main)


@pytest.mark.parametrize("power", sorted(POWER))
def test_each_power_cell_is_a_main_cell_with_more_seeds_under_its_label(power):
    # The report pools a cell's seeds by hash whichever file ran them; the name is the label the leaderboard
    # prints, so a seed run by the power file must read as the same cell as one the main file ran
    main = {s.hash: s for s in load(str(ROOT / POWER[power]))}
    cells = load(str(ROOT / power))
    assert cells and all(s.hash in main for s in cells), f"{power} runs a cell its main file does not have"
    for s in cells:
        assert s.name == main[s.hash].name
        assert set(main[s.hash].seeds) < set(s.seeds), f"{s.name}: the power file must extend the main file's seeds"
