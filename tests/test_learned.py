"""table4.md's 'utility without a defense, beside the base model' (bench.reporting.learned): which runs count,
the poisoning regimes' attacker-free twins, the curve, and the section in the report."""

from __future__ import annotations

import pytest

from bench.reporting import leaderboard, learned
from bench.store.results import ResultStore, Row
from tests.report_helpers import run_rows


def _run(scenario: str, seed: int, trained: float, base: float, *, metric: str = "utility.accuracy",
         defenses: str = "none", status: str = "ok", method: str = "lora", curve: list | None = None,
         attack: dict[tuple[str, str], float] | None = None) -> list[dict]:
    suffix = metric.removeprefix("utility.")
    metrics = {("none", metric): trained, ("none", f"utility.base.{suffix}"): base, **(attack or {})}
    extras = {}
    if curve is not None:
        metrics[("none", f"utility.curve.{suffix}")] = curve[-1][1]
        extras[("none", f"utility.curve.{suffix}")] = {"curve": curve}
    return run_rows(scenario, seed, method=method, defenses=defenses, status=status, metrics=metrics, extras=extras)


def _entries(rows: list[dict]) -> dict[tuple[str, str], learned.Learned]:
    board = leaderboard.build(rows)
    return {(e.regime, e.row): e for e in learned.build(board)}


def test_a_regime_that_beats_its_base_on_every_seed_learned_and_one_at_its_base_did_not():
    rows = []
    for seed, (good, flat) in enumerate([(0.80, 0.36), (0.85, 0.38), (0.90, 0.35)]):
        rows += _run("t4[method=lora]", seed, good, 0.35)
        rows += _run("t4-closed[method=textual-prompt]", seed, flat, 0.36, method="textual-prompt")
    entries = _entries(rows)
    good, flat = entries[("t4", "lora")], entries[("t4-closed", "textual-prompt")]
    assert (good.seeds, good.low, good.high) == (3, 0.80, 0.90) and good.base == pytest.approx(0.35)
    assert good.trained == pytest.approx(0.85) and good.change == pytest.approx(0.50)
    assert good.change_low < 0.50 < good.change_high and good.learned == "yes"
    assert flat.change == pytest.approx(0.0033, abs=1e-3) and flat.change_low < 0 < flat.change_high
    assert flat.learned == "no"


def test_a_cells_seeds_run_by_a_file_of_another_name_stay_one_regime_named_by_its_lowest_seed():
    # real-model.yaml ran seed 0 of a cell, real-model-fft-seeds.yaml seeds 1-2 of the same cell (same hash,
    # another name); by name alone the cell read as two regimes of 1 and 2 seeds
    rows = _run("real-model[method=fft]", 0, 0.38, 0.23, method="fft")
    for seed, trained in ((1, 0.43), (2, 0.33)):
        rows += [{**r, "scenario_hash": "h-real-model[method=fft]"}
                 for r in _run("real-model-fft-seeds[defenses=none]", seed, trained, 0.2, method="fft")]
    entries = _entries(rows)
    assert list(entries) == [("real-model", "fft")]
    assert entries[("real-model", "fft")].seeds == 3 and entries[("real-model", "fft")].trained == pytest.approx(0.38)


def test_defended_failed_and_single_seed_runs():
    rows = _run("t4[method=lora]", 0, 0.9, 0.3) + _run("t4[method=lora,dp]", 1, 0.3, 0.3, defenses="dp-local")
    rows += _run("t4[method=lora]", 1, 0.0, 0.3, status="failed")
    entry = _entries(rows)[("t4", "lora")]
    assert entry.seeds == 1 and entry.learned == "?"  # the defended and the failed run do not count


def test_a_poisoning_regime_reads_its_attacker_free_twin_once_per_seed():
    rows = []
    for seed in range(3):
        twin = 0.80 + 0.05 * seed
        for attack in ("byz-ipm", "poison-backdoor"):
            drop = 0.5 if attack == "byz-ipm" else 0.1  # the attacked model's utility differs by attack
            rows += _run(f"pois[method=fft,attacks={attack}]", seed, twin - drop, 0.3, method="fft",
                         attack={(attack, "poison.asr"): 0.5, (attack, "poison.utility_drop"): drop})
    entry = _entries(rows)[("pois", "fft")]
    assert entry.twin and entry.seeds == 3
    assert entry.trained == pytest.approx(0.85) and (entry.low, entry.high) == (pytest.approx(0.80), pytest.approx(0.90))


def test_the_curve_is_the_mean_over_seeds_per_round():
    rows = _run("t4[method=lora]", 0, 0.8, 0.3, curve=[[0, 0.3], [1, 0.6], [2, 0.8]])
    rows += _run("t4[method=lora]", 1, 0.9, 0.3, curve=[[0, 0.3], [1, 0.7], [2, 0.9]])
    assert _entries(rows)[("t4", "lora")].curve == pytest.approx((0.3, 0.65, 0.85))


def test_the_report_prints_the_section_with_each_regime(tmp_path):
    from bench.reporting.report import write_reports
    from tests.report_helpers import synthetic_grid

    store = ResultStore(tmp_path / "runs")
    store.append([Row(**r) for r in synthetic_grid()])
    flat = []
    for seed in range(3):
        flat += _run("t4-closed[method=textual-prompt]", seed, 0.36 + 0.01 * seed, 0.36, method="textual-prompt")
    store.append([Row(**r) for r in flat])
    write_reports(tmp_path / "runs", tmp_path / "out", [], figures=False)
    text = (tmp_path / "out" / "table4.md").read_text()
    section = text.split(f"## {learned.SECTION}", 1)[1].split("\n## ", 1)[0]
    assert text.index("## The matrix") < text.index(f"## {learned.SECTION}")
    line = next(x for x in section.splitlines() if x.startswith("| t4-closed |"))
    assert "| textual-prompt | accuracy | 3 | 0.36 | 0.37 (0.36-0.38) |" in line and "**no**" in line
    page = (tmp_path / "out" / "index.html").read_text()  # the page shows it too, from leaderboard.csv
    assert 'id="table4-learned"' in page and "<td>t4-closed</td><td>open-weight</td><td>textual-prompt</td>" in page
