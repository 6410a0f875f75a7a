"""Table 4 keeps each round protocol's cells apart (issue 19): a KD or split run is its own row, paired only
with the same protocol without the defense, and the paper's column says it is not in the paper's Table 4.
Reporting reads only the store, so these tests write made-up rows to a store and read the report back."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from report_helpers import run_rows

from bench.api.registry import PROTOCOLS
from bench.engine.runner import RunResult, _rows
from bench.reporting import leaderboard, paper4
from bench.reporting.report import write_reports
from bench.spec.scenario import load
from bench.store.results import ResultStore, Row

SEEDS = (0, 1, 2)


def _run(protocol: str | None, defense: str, attack: str, metric: str, value: float, seed: int,
         stored_as: str = "label") -> list[dict[str, Any]]:
    """One made-up run of ``fft``; the protocol stored as the runner stores it (``label``), only in the stored
    scenario (``config``: rows from before labels), or not at all (``protocol=None``: rows from before protocols)."""
    name = f"p[protocol={protocol},defenses={defense},attacks={attack}]"
    rows = run_rows(name, seed, method="fft", defenses=defense,
                    metrics={("none", "utility.accuracy"): 0.6, (attack, metric): value + 0.01 * seed})
    if protocol is not None and stored_as == "label":
        rows[0]["extra"]["protocol"] = protocol
    elif protocol is not None:
        rows[0]["extra"]["scenario_config"]["federation"] = {"protocol": protocol}
    return rows


def _grid() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for seed in SEEDS:
        rows += _run(None, "none", "mia-loss", "mia.auc", 0.70, seed)             # stored before protocols
        rows += _run(None, "dp-local", "mia-loss", "mia.auc", 0.52, seed)
        rows += _run("kd", "none", "mia-kd-logits", "mia.auc", 0.90, seed)
        rows += _run("kd", "dp-logits", "mia-kd-logits", "mia.auc", 0.55, seed)
        rows += _run("split", "none", "inversion-split", "inversion.recovered", 0.40, seed, stored_as="config")
        rows += _run("split (cut 1)", "none", "inversion-split", "inversion.recovered", 0.95, seed)
        rows += _run("split (cut 1)", "activation-noise", "inversion-split", "inversion.recovered", 0.60, seed)
    return rows


def test_the_leaderboard_names_each_runs_protocol_and_old_rows_ran_fedavg():
    board = leaderboard.build(_grid())
    protocol = {(r["defenses"], r["attacks"], r["seed"]): r["protocol"] for r in board}
    assert protocol[("none", "mia-loss", 0)] == "fedavg"                 # no label, no stored protocol
    assert protocol[("dp-logits", "mia-kd-logits", 1)] == "kd"           # the label the runner stored
    assert protocol[("none", "inversion-split", 2)] in {"split", "split (cut 1)"}
    assert {r["protocol"] for r in board} == {"fedavg", "kd", "split", "split (cut 1)"}  # from the stored scenario


def _table(tmp_path: Path) -> dict[tuple[str, str], dict[str, str]]:
    store = ResultStore(tmp_path / "runs")
    store.append([Row(**r) for r in _grid()])
    write_reports(tmp_path / "runs", tmp_path / "out", [], figures=False)
    with (tmp_path / "out" / "table4.csv").open() as handle:
        return {(r["protocol"], r["defense"]): r for r in csv.DictReader(handle)}


def test_kd_and_split_runs_are_their_own_table4_rows_paired_with_their_own_baseline(tmp_path):
    cells = _table(tmp_path)
    assert set(cells) == {("fedavg", "dp-local"), ("kd", "dp-logits"), ("split (cut 1)", "activation-noise")}
    fedavg, kd, split = cells["fedavg", "dp-local"], cells["kd", "dp-logits"], cells["split (cut 1)", "activation-noise"]
    # each pairs with its own protocol's undefended run: pooled by (tier, method, defense), KD's 0.90 and
    # FedAvg's 0.70 would share one baseline
    assert float(fedavg["success_without"]) == pytest.approx(0.71)
    assert float(kd["success_without"]) == pytest.approx(0.91) and float(kd["success_with"]) == pytest.approx(0.56)
    assert kd["role"] == "mia" and kd["attack"] == "mia-kd-logits" and kd["verdict"] == "mitigates"
    assert split["role"] == "inversion" and float(split["success_without"]) == pytest.approx(0.96)  # not the label-less split
    for cell in (kd, split):
        assert cell["paper"] == cell["comparison"] == paper4.NOT_IN_PAPER
    assert fedavg["paper"] == "applies" and fedavg["comparison"] == "agree"
    markdown = (tmp_path / "out" / "table4.md").read_text()
    assert "| open-weight | fft via kd | dp-logits | not in the paper's Table 4 |" in markdown
    assert "fft via split (cut 1)" in markdown and "| open-weight | fft | dp-local | applies |" in markdown


def test_a_table4_csv_from_before_the_protocol_column_reads_as_fedavg():
    from bench.reporting import matrix4

    old = {"tier": "open-weight", "method": "fft", "defense": "dp-local", "role": "mia", "verdict": "mitigates",
           "paper": "applies", "comparison": "agree"}
    _, _, [(label, _)] = matrix4.layout([old])
    assert label == "fft"


def test_the_runner_stores_the_protocols_label_with_its_cut_depth():
    scenarios = {s.federation.protocol: s for s in load("scenarios/protocols.yaml")}
    for protocol, label in (("fedavg", "fedavg"), ("kd", "kd"), ("split", "split (cut 1)")):
        rows = _rows(scenarios[protocol], 0, RunResult(status="failed", error="not run"), 0.0)
        assert rows[0].extra["protocol"] == label
    deeper = scenarios["split"].federation.__class__(protocol="split", cut_layer=2)
    assert PROTOCOLS.get("split")(deeper).label() == "split (cut 2)"


def test_fedsgd_and_fedavg_runs_share_the_papers_row_of_a_method(tmp_path):
    # FedSGD is FedAvg with one local step: inversion runs FedSGD (its threat model), membership FedAvg; the
    # paper's Table 4 has one row per method, so both land in it (keyed by label, fft would be two rows)
    rows: list[dict[str, Any]] = []
    for seed in SEEDS:
        rows += _run("fedavg", "none", "mia-loss", "mia.auc", 0.70, seed)
        rows += _run("fedavg", "dp-local", "mia-loss", "mia.auc", 0.52, seed)
        rows += _run("fedsgd", "none", "inversion-dager", "inversion.recovered", 0.95, seed)
        rows += _run("fedsgd", "dp-local", "inversion-dager", "inversion.recovered", 0.05, seed)
    store = ResultStore(tmp_path / "runs")
    store.append([Row(**r) for r in rows])
    write_reports(tmp_path / "runs", tmp_path / "out", [], figures=False)
    with (tmp_path / "out" / "table4.csv").open() as handle:
        cells = {(r["protocol"], r["role"]): r for r in csv.DictReader(handle)}
    assert set(cells) == {("fedavg", "mia"), ("fedavg", "inversion")}
    assert float(cells["fedavg", "inversion"]["success_without"]) == pytest.approx(0.96)
    assert cells["fedavg", "inversion"]["comparison"] == "agree"
    matrix = (tmp_path / "out" / "table4.md").read_text()
    assert "via fedsgd" not in matrix
    assert [line for line in matrix.splitlines() if line.startswith("| fft |")] == ["| fft | ✓ ✓ │ A |"]


def test_the_missing_cell_list_crosses_a_protocol_only_with_the_defenses_run_on_it():
    # kd ran dp-logits, the parameter-sharing rows dp-local: neither is a gap of the other's rows
    from bench.reporting import table4

    board = leaderboard.build(_grid())
    notes = table4.missing(board, table4.build(board, paper=paper4.annotate))
    assert not [n for n in notes if "via kd" in n and "dp-local" in n], notes
    assert not [n for n in notes if "via kd" not in n and "dp-logits" in n], notes
    # a real gap inside one protocol is still named: a second method ran kd without its defense
    extra = run_rows("p[protocol=kd,method=lora,defenses=none,attacks=mia-kd-logits]", 0, method="lora", defenses="none",
                     metrics={("none", "utility.accuracy"): 0.6, ("mia-kd-logits", "mia.auc"): 0.9})
    extra[0]["extra"]["protocol"] = "kd"
    board = leaderboard.build(_grid() + extra)
    notes = table4.missing(board, table4.build(board, paper=paper4.annotate))
    assert [n for n in notes if "lora via kd" in n] == ["no run of open-weight / lora via kd / defense dp-logits with a "
                                                         "membership inference attack"], notes


def test_an_attack_that_cannot_read_a_protocols_channel_has_no_table4_cell_on_its_row(tmp_path):
    # table4-protocols.yaml lists KD's logit attack and split's activation inversion on every row; the runner
    # refuses each on the other's channel. Before, the refused attack kept its role, so the kd row got an
    # inversion cell (and the split row a membership cell) reading "not applicable", counted as gaps.
    from bench.api.metrics import Metric
    from bench.api.vocabulary import RunStatus
    from bench.reporting import table4

    grid = {(s.federation.protocol, s.defense_label): s for s in load("scenarios/table4-protocols.yaml")}
    rows: list[Row] = []
    for (protocol, defense), scenario in grid.items():
        own, other = ("mia-kd-logits", "inversion-split-replay") if protocol == "kd" else ("inversion-split-replay", "mia-kd-logits")
        metric = "mia.auc" if protocol == "kd" else "inversion.recovered"
        for seed in SEEDS:
            value = (0.9 if defense == "none" else 0.55) if protocol == "kd" else (0.4 if defense == "none" else 0.1)
            result = RunResult(metrics=[("none", Metric("utility.accuracy", 0.6)), (own, Metric(metric, value + 0.01 * seed))],
                               skipped=[(other, RunStatus.INCOMPATIBLE, "refused")])
            stored = _rows(scenario, seed, result, 1.0)
            assert stored[0].extra["attack_roles"] == {own: "mia" if protocol == "kd" else "inversion"}
            rows += stored
    store = ResultStore(tmp_path / "runs")
    store.append(rows)
    board = leaderboard.build(store.rows())
    cells = table4.build(board, paper=paper4.annotate)
    assert {(c.protocol, c.role) for c in cells} == {("kd", "mia"), ("split (cut 1)", "inversion")}
    assert all(c.verdict != "not applicable" for c in cells), [(c.protocol, c.role, c.verdict) for c in cells]
    notes = table4.missing(board, cells)
    assert not [n for n in notes if "inversion" in n and "kd" in n], notes
