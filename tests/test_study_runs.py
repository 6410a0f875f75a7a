"""The studies' collect scripts read finished runs and write curve CSVs through ``bench.tools.study_runs``."""

from __future__ import annotations

import csv
import json

from bench.tools.study_runs import ok_rows, write_curve


def test_ok_rows_reads_every_folder_in_order_and_leaves_failed_runs_out(tmp_path):
    for name, records in (("a", [[("r1", "ok"), ("r2", "failed")]]), ("b", [[("r1", "ok")], [("r3", "incompatible")]])):
        (tmp_path / name).mkdir()
        lines = [json.dumps({"rows": [{"run_id": run, "status": status} for run, status in record]}) for record in records]
        (tmp_path / name / "results.jsonl").write_text("\n".join(lines) + "\n")
    assert [r["run_id"] for r in ok_rows(str(tmp_path / "a"), str(tmp_path / "b"))] == ["r1", "r1"]


def test_write_curve_keeps_its_columns_and_leaves_missing_values_empty(tmp_path):
    path = tmp_path / "curves.csv"
    write_curve(path, ["method", "rate"], [{"method": "lora", "rate": 0.3, "other": 1}, {"method": "fft"}])
    assert list(csv.reader(path.open())) == [["method", "rate"], ["lora", "0.3"], ["fft", ""]]


def test_a_curves_summary_averages_the_rows_that_have_the_column_and_counts_those_beating_the_floor():
    from bench.tools.study_runs import beating, column_mean

    rows = [{"mia.auc": 0.60}, {"mia.auc": 0.52}, {"other": 1.0}, {"mia.auc": None}]
    assert column_mean(rows, "mia.auc", 3) == "0.560"
    assert column_mean(rows, "absent") == ""
    assert beating(rows, "mia.auc", 0.5, 0.05) == 1


def test_attack_metrics_keys_by_run_and_attack_and_leaves_out_the_runs_own_rows():
    from bench.tools.study_runs import attack_metrics

    def row(run, attack, metric, value):
        return {"run_id": run, "attack": attack, "metric": metric, "value": value, "method": "fft", "seed": 0}

    rows = [row("r1", "mia-a", "mia.auc", 0.612345), row("r1", "mia-a", "other", 1.0), row("r1", "none", "mia.auc", 0.9),
            row("r1", "mia-b", "mia.auc", 0.5), row("r2", "mia-a", "mia.auc", 0.7)]
    table = attack_metrics(rows, ["mia.auc"])
    assert list(table) == [("r1", "mia-a"), ("r1", "mia-b"), ("r2", "mia-a")]
    assert table[("r1", "mia-a")] == {"method": "fft", "seed": 0, "attack": "mia-a", "mia.auc": 0.6123}


def test_grouped_keeps_first_seen_order_of_groups_and_rows():
    from bench.tools.study_runs import grouped

    rows = [{"m": "b", "v": 1}, {"m": "a", "v": 2}, {"m": "b", "v": 3}]
    assert grouped(rows, ["m"]) == {("b",): [rows[0], rows[2]], ("a",): [rows[1]]}
    assert list(grouped(rows, ["m"])) == [("b",), ("a",)]
