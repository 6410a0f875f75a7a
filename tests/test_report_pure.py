"""``report`` is a pure function of the stored runs: it never imports the training code, writes only
under its ``--out`` (by default beside the runs, never over the published results/), draws the ROC
figure from the points each run stored, and says what an empty or partial grid is missing."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from report_helpers import privacy_run, run_rows, synthetic_grid

from bench.reporting import leaderboard, table4
from bench.scoring.roc import compact_roc, stored_roc, trapezoid_auc
from bench.store.results import ResultStore, Row

ROOT = Path(__file__).resolve().parents[1]
# Modules that mean "the training path was loaded": the engine, the components, torch itself.
FORBIDDEN = ("torch", "transformers", "peft", "opacus", "bench.engine.federation", "bench.client.training", "bench.engine.runner",
             "bench.api.registry", "bench.spec.scenario", "bench.world.models", "bench.methods", "attacks", "defenses")


def snapshot(*roots: Path, skip: Path | None = None) -> dict[str, str]:
    """path -> content hash of every file under ``roots`` (outside ``skip``)."""
    found = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not (skip and path.is_relative_to(skip)):
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def report_in_subprocess(args: list[str], cwd: Path) -> tuple[int, list[str], str]:
    """(exit code, modules loaded, stderr) of ``python -m bench report ARGS`` in a fresh interpreter."""
    code = ("import json, sys\nfrom bench.cli import main\nrc = main(sys.argv[1:])\n"
            "print('MODULES=' + json.dumps(sorted(sys.modules)))\nsys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", code, "report", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    modules = json.loads(done.stdout.split("MODULES=", 1)[1]) if "MODULES=" in done.stdout else []
    return done.returncode, modules, done.stderr


def store(path: Path, rows: list[dict]) -> Path:
    ResultStore(path).append([Row(**r) for r in rows])
    return path


def test_report_imports_no_training_code_and_writes_only_under_out(tmp_path):
    runs = store(tmp_path / "runs", synthetic_grid())
    (runs / "table1.csv").write_text("tier,method\nopen-weight,lora\n")
    (runs / "table1.md").write_text("| tier | method |\n")
    out = tmp_path / "published"
    before = snapshot(tmp_path, ROOT / "results")
    rc, modules, stderr = report_in_subprocess([str(runs), "--out", str(out)], cwd=tmp_path)
    assert rc == 0, stderr
    assert [m for m in modules if m.split(".")[0] in FORBIDDEN or m in FORBIDDEN] == []
    assert snapshot(tmp_path, ROOT / "results", skip=out) == before        # nothing outside --out changed
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"leaderboard.csv", "table4.csv", "table4.md", "table1.csv", "table1.md", "index.html",
            "figures/roc.png", "figures/table4_heatmap.png", "figures/privacy_utility_frontier.png"} <= written
    assert (out / "table1.csv").read_text() == (runs / "table1.csv").read_text()


def test_report_defaults_to_beside_the_runs_not_the_published_results(tmp_path):
    runs = store(tmp_path / "runs", synthetic_grid())
    before = snapshot(ROOT / "results")
    rc, _, stderr = report_in_subprocess([str(runs), "--no-figures"], cwd=ROOT)
    assert rc == 0, stderr
    assert (runs / "report" / "table4.md").exists() and (runs / "report" / "leaderboard.csv").exists()
    assert snapshot(ROOT / "results") == before
    assert "table1 not written" in stderr   # these runs stored no Table 1, and the report says so


def test_roc_figure_comes_from_stored_points_and_shows_only_what_ran():
    from bench.reporting.figures import stored_curves

    rows = [r for r in synthetic_grid() if r["defenses"] in ("none", "dp-local")]
    attack, curves = stored_curves(rows)
    assert attack == "mia-reference"
    assert set(curves) == {"lora / none", "lora / dp-local"}          # rlhf, fft, ... were never run
    fpr, tpr = curves["lora / dp-local"]
    assert trapezoid_auc(fpr, tpr) == pytest.approx(0.52, abs=0.01)  # seed 0's curve, the lowest seed
    two_tiers = rows + [{**r, "tier": "open-source"} for r in rows if r["defenses"] == "none"]
    assert set(stored_curves(two_tiers)[1]) == {"open-weight / lora / none", "open-weight / lora / dp-local",
                                                "open-source / lora / none"}
    older = [{**r, "extra": {}} for r in rows]                        # runs stored before ROC points
    assert stored_curves(older) == (None, {})


def test_compact_roc_is_small_keeps_the_ends_and_the_area():
    rng = random.Random(0)
    labels = [i % 2 for i in range(4000)]
    scores = [rng.gauss(0.6 * y, 1.0) for y in labels]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    positives, negatives = sum(labels), len(labels) - sum(labels)
    fpr, tpr, tp, fp = [0.0], [0.0], 0, 0
    for i in order:
        tp, fp = tp + labels[i], fp + 1 - labels[i]
        fpr.append(fp / negatives)
        tpr.append(tp / positives)
    compact = compact_roc(fpr, tpr)
    assert len(compact["fpr"]) <= 200 and len(json.dumps(compact)) < 5000
    assert (compact["fpr"][0], compact["tpr"][0]) == (0.0, 0.0) and (compact["fpr"][-1], compact["tpr"][-1]) == (1.0, 1.0)
    assert compact["fpr"][:10] == [round(v, 5) for v in fpr[:10]]  # the low-FPR end is kept point by point
    assert trapezoid_auc(compact["fpr"], compact["tpr"]) == pytest.approx(trapezoid_auc(fpr, tpr), abs=0.005)
    assert stored_roc(json.dumps({"roc": compact})) == (compact["fpr"], compact["tpr"])  # also from results.csv
    with pytest.raises(ValueError):
        compact_roc([0.0, 1.0], [0.0])


def test_runs_store_the_roc_and_the_resolved_scenario():
    from bench.engine import runner
    from bench.scoring.score import Metric
    from bench.spec.scenario import load

    scenario = load(ROOT / "scenarios" / "smoke.yaml")[0]
    result = runner.RunResult(metrics=[("mia-loss", Metric("mia.auc", 0.7)), ("mia-loss", Metric("mia.tpr@0.01", 0.1))],
                              row_extra={("mia-loss", "mia.auc"): {"roc": compact_roc([0, 0.5, 1], [0, 0.9, 1])}})
    rows = runner._rows(scenario, 0, result, 1.0)
    auc_row = next(r for r in rows if r.metric == "mia.auc")
    assert stored_roc(auc_row.extra) == ([0, 0.5, 1], [0, 0.9, 1])
    assert all("roc" not in r.extra for r in rows if r is not auc_row)   # rows stay small
    config = rows[0].extra["scenario_config"]
    assert config["federation"]["rounds"] == scenario.federation.rounds and "mia_candidates" in config["federation"]
    assert config["task"]["params"]["max_length"] == 48 and [a["name"] for a in config["attacks"]] == ["mia-loss"]
    assert all("scenario_config" not in r.extra for r in rows[1:])
    assert rows[0].extra["regime"] == scenario.regime   # what Table 4 pairs a defended run by
    json.dumps(config)
    failed = runner._rows(scenario, 0, runner.RunResult(status="failed", error="boom"), 1.0)
    assert len(failed) == 1 and leaderboard.stored_attacks([vars(failed[0])]) == ["mia-loss"]


def test_an_empty_grid_says_what_is_missing_instead_of_an_empty_comparison(tmp_path):
    from bench.reporting.report import write_reports

    rows = []
    for seed in (0, 1):   # runs without any attack: no Table 4 cell at all
        rows += run_rows("plain", seed, metrics={("none", "utility.accuracy"): 0.8})
    notes = write_reports(store(tmp_path / "runs", rows), tmp_path / "out", figures=False)
    text = (tmp_path / "out" / "table4.md").read_text()
    assert "Comparison with the paper: ." not in text and "No Table 4 cell" in text
    assert "no run has a membership, inversion, backdoor, Byzantine or extraction attack" in text
    assert any("no run has" in n for n in notes)
    page = (tmp_path / "out" / "index.html").read_text()
    assert '<ul id="table4-missing"><li>no run has a membership' in page   # the page says so too


def test_a_partial_grid_lists_its_missing_cells_and_seeds():
    rows = []
    for seed in (0, 1, 2):
        rows += privacy_run("lora", "none", seed, auc=0.8, rouge=0.5, accuracy=0.9)
        rows += privacy_run("fft", "none", seed, auc=0.8, rouge=0.5, accuracy=0.9)
        rows += privacy_run("lora", "dp-local", seed, auc=0.6, rouge=0.2, accuracy=0.8)
    rows += privacy_run("fft", "secagg", 0, auc=0.8, rouge=0.0, accuracy=0.9)     # one seed of three
    board = leaderboard.build(rows)
    gaps = table4.missing(board, table4.build(board))
    assert "no run of open-weight / fft / defense dp-local with a membership inference attack" in gaps
    assert "no run of open-weight / lora / defense secagg with a gradient inversion attack" in gaps
    assert ("open-weight / fft / secagg (membership inference): 1 paired seeds of 3; seeds run on one side: "
            "1-2 (without the defense only)") in gaps
    assert not [g for g in gaps if "lora / dp-local" in g]   # all three seeds paired: no gap
    only_baseline = leaderboard.build([r for r in rows if r["defenses"] == "none"])
    assert any("runs without a defense only" in g for g in table4.missing(only_baseline, []))


@pytest.mark.parametrize("width", [60, 100, 200])
def test_table_fits_the_terminal_and_shows_no_nan_wall(tmp_path, width):
    from bench.reporting.report import metric_table

    runs = store(tmp_path / "runs", synthetic_grid())
    text = metric_table(runs, width=width)
    lines = text.splitlines()
    assert max(map(len, lines)) <= width and "NaN" not in text and "nan" not in text
    assert lines[0].split()[:3] == ["scenario", "seeds", "status"]
    assert len([line for line in lines[1:] if not line.startswith("(")]) == len({r["scenario"] for r in synthetic_grid()})
    headline = ["utility", "mia.auc", "inversion.recovered", "poison.asr", "dp.epsilon", "cost.wall_s"]
    shown = lines[0].split()[3:]
    assert shown == headline[:len(shown)]     # columns drop from the right, with a note saying so
    assert (shown == headline) == (width == 200) and ("more columns do not fit" in lines[-1]) == (width < 200)
    if "mia.auc" in shown:
        assert "0.52" in next(line for line in lines if "dp-local" in line)   # mean of three seeds
    chosen = metric_table(runs, metrics=["mia.auc", "cost.client_s"], width=max(width, 100)).splitlines()
    assert chosen[0].split()[3:] == ["mia.auc", "cost.client_s"]


def test_the_stored_scenario_names_plugin_code(monkeypatch):
    from bench.api import registry
    from bench.spec.scenario import load
    from bench.store.provenance import scenario_record

    scenario = load(ROOT / "scenarios" / "smoke.yaml")[0]
    assert "plugins" not in scenario_record(scenario)
    monkeypatch.setattr(registry, "loaded_plugins", ["/home/me/plugins/my_attack.py"])
    assert scenario_record(scenario)["plugins"] == ["/home/me/plugins/my_attack.py"]


def _in_regime(rows: list[dict], regime: str) -> list[dict]:
    """A run's rows as the runner stores them: its regime (``Scenario.regime``) in the first row's extra, and
    a scenario hash of its own (two regimes are two scenarios)."""
    rows[0]["extra"] = {**rows[0]["extra"], "regime": regime}
    return [{**r, "scenario_hash": f"{r['scenario_hash']}-{regime}"} for r in rows]


def test_a_defended_run_pairs_with_the_undefended_run_of_its_own_regime():
    # Oracle: two regimes of lora in one store (Table 4's and a study's: same seeds, other settings). Regime A's
    # defense halves its advantage; regime B's undefended runs are far stronger. Pairing by seed alone took
    # whichever undefended run came last, so the cell compared A's defended runs with B's baseline.
    rows = []
    for seed in (0, 1, 2):
        rows += _in_regime(privacy_run("lora", "none", seed, auc=0.70 + 0.01 * seed, rouge=0.5, accuracy=0.9), "A")
        rows += _in_regime(privacy_run("lora", "dp-local", seed, auc=0.60 + 0.01 * seed, rouge=0.2, accuracy=0.8), "A")
    for seed in (0, 1, 2):   # the study: its name sorts after the grid's, so pairing by seed alone took its runs
        rows += _in_regime(run_rows(f"zz-study[method=lora,defenses=none,attacks=mia-reference,s={seed}]", seed,
                                    metrics={("none", "utility.accuracy"): 0.9, ("mia-reference", "mia.auc"): 0.95}), "B")
    board = leaderboard.build(rows)
    assert {r["regime"] for r in board} == {"A", "B"}
    cell = next(c for c in table4.build(board) if c.defense == "dp-local" and c.role == "mia")
    assert cell.seeds == 3 and cell.success_without == pytest.approx(0.71)   # A's baseline, not B's 0.95
    assert cell.change == pytest.approx(-0.10)
    assert not [g for g in table4.missing(board, [cell]) if "dp-local" in g]


@pytest.mark.parametrize(("seeds", "text"), [([0], "0"), ([3, 1, 2], "1-3"), ([1, 2, 3, 7, 9, 10], "1-3, 7, 9-10"),
                                             ([55, *range(56, 90)], "55-89")])
def test_one_sided_seeds_read_as_runs_of_consecutive_seeds(seeds, text):
    assert table4.seed_ranges(seeds) == text


def test_a_cell_pooling_two_regimes_or_missing_a_twin_says_so():
    rows = []
    for regime, seeds in (("A", (0, 1)), ("B", (0,))):
        for seed in seeds:
            rows += _in_regime(privacy_run("lora", "none", seed, auc=0.8, rouge=0.5, accuracy=0.9), regime)
            rows += _in_regime(privacy_run("lora", "dp-local", seed, auc=0.6, rouge=0.2, accuracy=0.8), regime)
    rows += _in_regime(privacy_run("lora", "dp-local", 1, auc=0.6, rouge=0.2, accuracy=0.8), "B")  # no B baseline at 1
    board = leaderboard.build(rows)
    cell = next(c for c in table4.build(board) if c.defense == "dp-local" and c.role == "mia")
    assert cell.seeds == 3   # (A, 0), (A, 1), (B, 0)
    gaps = [g for g in table4.missing(board, [cell]) if "dp-local" in g]
    assert gaps == ["open-weight / lora / dp-local (membership inference): pools 2 regimes (scenarios that differ in "
                    "more than the defense)",
                    "open-weight / lora / dp-local (membership inference): 3 paired seeds of 4; seeds run on one side: "
                    "1 (with the defense only)"], gaps


def test_one_sided_seeds_no_file_plans_are_by_design_and_planned_ones_stay_gaps():
    # A power file ran the shared undefended cell to seeds 0-4, dp-local's cell only to 0-2. With the files'
    # plan (hash, seed) the undefended seeds 3-4 are by design; a seed the plan asks of dp-local and the store
    # lacks (seed 2 here, planned but never run) is still a gap; without a plan everything one-sided is a gap.
    rows = []
    for seed in range(5):
        rows += privacy_run("lora", "none", seed, auc=0.8, rouge=0.5, accuracy=0.9)
    for seed in range(2):
        rows += privacy_run("lora", "dp-local", seed, auc=0.6, rouge=0.2, accuracy=0.8)
    board = leaderboard.build(rows)
    cell = next(c for c in table4.build(board) if c.defense == "dp-local" and c.role == "mia")
    label = "open-weight / lora / dp-local (membership inference)"
    defended, undefended = (next(r["scenario_hash"] for r in board if r["defenses"] == d) for d in ("dp-local", "none"))
    planned = frozenset({(undefended, s) for s in range(5)} | {(defended, s) for s in range(3)})
    gaps = [g for g in table4.missing(board, [cell], planned=planned) if label in g]
    assert gaps == [f"{label}: 2 paired seeds of 3; seeds run on one side: 2 (without the defense only)"], gaps
    assert table4.by_design(board, [cell], planned) == [
        f"{label}: 2 paired seeds of 4; seeds run on one side: 3-4 (without the defense only)"]
    unplanned = [g for g in table4.missing(board, [cell]) if label in g]
    assert unplanned == [f"{label}: 2 paired seeds of 5; seeds run on one side: 2-4 (without the defense only)"]


def test_runs_stored_before_regimes_pair_by_seed_so_a_resumed_sweep_keeps_its_pairs():
    # the undefended runs finished before regimes were stored (no regime), the defended ones after (regime A)
    rows = []
    for seed in (0, 1, 2):
        rows += privacy_run("lora", "none", seed, auc=0.70 + 0.01 * seed, rouge=0.5, accuracy=0.9)
        rows += _in_regime(privacy_run("lora", "dp-local", seed, auc=0.60 + 0.01 * seed, rouge=0.2, accuracy=0.8), "A")
    board = leaderboard.build(rows)
    cell = next(c for c in table4.build(board) if c.defense == "dp-local" and c.role == "mia")
    assert cell.seeds == 3 and cell.change == pytest.approx(-0.10)
    assert not [g for g in table4.missing(board, [cell]) if "dp-local" in g]
