"""Benchmark: ``report`` on 1,000 stored runs (every table, every figure, index.html). Goal: under 10 s.

The store is synthetic (``tests/report_helpers``): 10 methods x 10 defenses x 10 seeds of a privacy
run with two membership attacks, each storing a 200-point ROC curve, as real runs do. Nothing trains:
the report reads only what the runs stored.
"""

from __future__ import annotations

import pytest
from report_helpers import privacy_run, roc_points

from bench.store.results import ResultStore, Row

METHODS = [f"method-{i}" for i in range(10)]
DEFENSES = ["none"] + [f"defense-{i}" for i in range(9)]
SEEDS = range(10)


def stored_runs(directory):
    rows = []
    for method in METHODS:
        for d, defense in enumerate(DEFENSES):
            for seed in SEEDS:
                auc = 0.8 - 0.02 * d + 0.005 * seed
                run = privacy_run(method, defense, seed, auc=auc, rouge=0.5 - 0.04 * d, accuracy=0.9 - 0.01 * d,
                                  epsilon=8.0 if defense != "none" else None)
                for row in run:
                    if row["metric"] == "mia.auc":
                        row["extra"] = roc_points(row["value"], n=200)
                rows += run
    ResultStore(directory).append([Row(**r) for r in rows])
    return directory


@pytest.mark.perf
def test_report_on_1000_stored_runs(benchmark, tmp_path):
    from bench.reporting.report import write_reports

    runs = stored_runs(tmp_path / "runs")
    notes = benchmark.pedantic(write_reports, args=(runs, tmp_path / "out"), rounds=3, iterations=1)
    assert not [n for n in notes if n.startswith(("roc", "privacy_utility"))], notes
    assert (tmp_path / "out" / "figures" / "roc.png").exists()
    assert len((tmp_path / "out" / "leaderboard.csv").read_text().splitlines()) == 1 + 1000
