"""The leaderboard's schema and contents, presets, and the report pipeline on synthetic rows."""

from __future__ import annotations

import csv

import pytest
from report_helpers import poison_run, run_rows, synthetic_grid

from bench.api.errors import UserError
from bench.reporting import leaderboard, table4
from bench.spec import presets
from bench.store.results import ResultStore, Row

EXPECTED_COLUMNS = [
    "leaderboard_schema", "scenario", "scenario_hash", "seed", "tier", "model", "task", "method", "defenses", "attacks",
    "status", "error", "utility", "utility_metric", "utility_base", "utility_curve", "utility.accuracy", "utility.macro_f1", "utility.perplexity",
    "utility.rouge_l", "utility.reward_accuracy", "mia_attack", "mia.auc", "mia.auc_ci_low", "mia.auc_ci_high",
    "mia.tpr@0.01", "mia.tpr@0.001", "mia.balanced_acc", "mia.exposure", "inversion_attack", "inversion.recovered", "inversion.rouge1",
    "inversion.rouge2", "inversion.exact", "inversion.token_f1", "poison_attack", "poison.asr", "poison.asr_ci_low",
    "poison.asr_ci_high", "poison.utility_drop", "extraction_attack", "extraction.rate", "extraction.rate_ci_low",
    "extraction.rate_ci_high", "extraction.base_rate", "extraction.nonmember_rate", "dp.epsilon", "dp.delta",
    "dp.epsilon_lower", "privacy.egress_records", "privacy.egress_pii_fraction", "privacy.residual_pii_fraction",
    "cost.wall_s", "cost.client_s",
    "cost.server_s", "cost.bytes_up", "cost.bytes_down", "cost.expansion", "cost.peak_mem_mb", "git_commit", "device",
    "attack_families", "attack_roles", "defense_families", "protocol", "regime",
]


def test_leaderboard_schema_is_pinned():
    # Changing the columns is a schema change: bump LEADERBOARD_SCHEMA and the README, then this list.
    assert leaderboard.LEADERBOARD_SCHEMA == 8
    assert leaderboard.COLUMNS == EXPECTED_COLUMNS


def test_one_row_per_run_with_the_strongest_attack_per_family(tmp_path):
    board = leaderboard.build(synthetic_grid())
    assert len(board) == len({(r["scenario_hash"], r["seed"]) for r in synthetic_grid()})
    row = next(r for r in board if r["defenses"] == "none" and r["mia_attack"] and r["seed"] == 0)
    assert row["mia_attack"] == "mia-reference" and row["mia.auc"] == pytest.approx(0.80)   # mia-loss had 0.75
    assert row["attacks"] == "inversion-dager+mia-loss+mia-reference"
    assert row["utility"] == pytest.approx(0.9) and row["utility_metric"] == "utility.accuracy"
    path = leaderboard.write_csv(board, tmp_path / "leaderboard.csv")
    with path.open() as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == EXPECTED_COLUMNS and len(rows) == len(board)
    back = leaderboard.read_csv(path)
    assert back[0]["leaderboard_schema"] == "8" and isinstance(back[0]["cost.wall_s"], float)


def test_failed_and_incompatible_runs_keep_their_attacks_and_reason():
    rows = run_rows("t4[method=lora,defenses=secagg,attacks=byz-ipm,local_steps=4]", 0, status="incompatible",
                    error="robust needs updates")
    (row,) = leaderboard.build(rows)
    assert row["status"] == "incompatible" and row["error"] == "robust needs updates"
    assert row["attacks"] == "byz-ipm" and row["utility"] is None
    (named,) = leaderboard.build(rows, {rows[0]["scenario_hash"]: ["byz-alie"]})
    assert named["attacks"] == "byz-alie"


def test_families_and_roles_come_from_the_stored_declaration_never_from_the_name():
    rows = poison_run("lora", "none", 0, "byz-ipm", asr=0.5, accuracy=0.5)
    (row,) = leaderboard.build(rows)
    assert row["attack_families"] == "byz-ipm=poison" and row["attack_roles"] == "byz-ipm=byzantine"
    assert row["poison_attack"] == "byz-ipm"
    for r in rows:  # the same run stored with other declarations: the name no longer decides anything
        extra = r["extra"]
        extra.update({"family": "mia", "role": "mia"} if r["attack"] != "none" else {})
        if "attack_families" in extra:
            extra.update(attack_families={"byz-ipm": "mia"}, attack_roles={"byz-ipm": "mia"})
    (relabelled,) = leaderboard.build(rows)
    assert relabelled["poison_attack"] is None and relabelled["mia_attack"] == "byz-ipm"
    assert table4.roles_of_run(relabelled) == ["mia"] and table4.roles_of_run(row) == ["byzantine"]


def test_presets_rescale_and_rename(tmp_path):
    from bench.spec.scenario import load

    (scenario,) = load("scenarios/smoke.yaml")[:1]
    assert presets.apply([scenario], "cpu-small") == [scenario]
    (gpu,) = presets.apply([scenario], "gpu")
    assert gpu.model.name == "hf" and gpu.device == "cuda" and gpu.name.endswith("@gpu")
    assert gpu.federation.rounds == scenario.federation.rounds * 5
    assert gpu.federation.examples_per_client == scenario.federation.examples_per_client * 4
    assert gpu.hash != scenario.hash   # resuming never mixes preset sizes
    with pytest.raises(UserError, match="unknown preset"):
        presets.apply([scenario], "tpu")


def test_report_pipeline_writes_every_table(tmp_path):
    store = ResultStore(tmp_path / "runs")
    grid = synthetic_grid()
    store.append([Row(**r) for r in grid])
    from bench.reporting.report import write_reports

    notes = write_reports(tmp_path / "runs", tmp_path / "out", [], figures=False)
    for name in ("leaderboard.csv", "table4.csv", "table4.md", "index.html"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    # the notes say what is missing: two Byzantine cells of the grid, and Table 1 (these runs stored none)
    assert [n for n in notes if n.startswith("table4: ")] == [
        "table4: no run of open-weight / lora / defense robust-krum with a Byzantine attack",
        "table4: no run of open-weight / rlhf / defense secagg with a Byzantine attack"]
    assert any(n.startswith("table1 not written") for n in notes)
    table4_rows = list(csv.DictReader((tmp_path / "out" / "table4.csv").open()))
    assert {(r["defense"], r["role"]) for r in table4_rows} >= {("dp-local", "mia"), ("robust-median", "backdoor")}


def test_study_summary_means_over_seeds():
    from bench.reporting.report import study_summary

    board = leaderboard.build(synthetic_grid())
    text = study_summary(board)
    dp_row = next(line for line in text.splitlines() if "| dp-local |" in line)
    assert "| 3 | ok |" in dp_row and "| 0.52 |" in dp_row and "| mia-reference |" in dp_row


def test_study_summary_keeps_the_settings_a_study_varies_apart():
    # Oracle: two settings of one method without a defense (a study over rounds), seeds 0-1 each; the old
    # summary keyed rows by (tier, method, defenses) and printed one mean of both settings (0.5)
    from bench.reporting.report import study_summary

    rows = []
    for rounds, accuracy in ((10, 0.6), (20, 0.4)):
        for seed in (0, 1):
            rows += run_rows(f"kd[rounds={rounds}]", seed, method="fft",
                             metrics={("none", "utility.accuracy"): accuracy + 0.01 * seed})
    lines = [line for line in study_summary(leaderboard.build(rows)).splitlines() if line.startswith("| kd[")]
    assert len(lines) == 2, lines
    assert lines[0].startswith("| kd[rounds=10] | open-weight | fft | none | 2 | ok |") and "| 0.605 |" in lines[0]
    assert lines[1].startswith("| kd[rounds=20] |") and "| 0.405 |" in lines[1]


def test_study_summary_labels_a_cell_by_its_lowest_seeds_run_whichever_file_ran_the_others():
    # seeds 1-2 of a cell run later by a file of another name (same hash) and stored first: the row pools the
    # three seeds under the name of seed 0's run, not of whichever row came first
    from bench.reporting.report import study_summary

    rows = []
    for name, seed in (("real-model-fft-seeds[defenses=none]", 1), ("real-model-fft-seeds[defenses=none]", 2),
                       ("real-model[method=fft]", 0)):
        rows += [{**r, "scenario_hash": "h-fft"} for r in run_rows(name, seed, method="fft",
                                                                   metrics={("none", "utility.accuracy"): 0.3 + 0.1 * seed})]
    lines = [line for line in study_summary(leaderboard.build(rows)).splitlines() if "| fft |" in line]
    assert len(lines) == 1 and lines[0].startswith("| real-model[method=fft] |") and "| 3 | ok |" in lines[0], lines


def test_frontier_points_group_by_method_and_epsilon():
    from bench.reporting.figures import frontier_points

    points = frontier_points(leaderboard.build(synthetic_grid()))
    lora = sorted(points["lora"])
    assert [p[0] for p in lora] == [8.0, float("inf")]
    assert lora[0][1] == pytest.approx(0.52) and lora[0][2] == pytest.approx(0.8)
    assert "lora+secagg" in points and "robust-krum" not in str(points)
