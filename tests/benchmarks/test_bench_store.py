"""Cost of appending one run to the results store: the 10th against the 10,000th (pytest-benchmark; ``-m perf``).

Target: the same cost (an append writes one fsynced line and reads nothing). ``extra_info`` carries
the median seconds of both appends and their ratio; nothing here asserts a timing.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from itertools import count

import pytest

from bench.store.results import ResultStore, Row

pytestmark = pytest.mark.perf

ROWS_PER_RUN, ROUNDS = 20, 30


def _run(seed: int) -> list[Row]:
    """A run the size of a real one: ~20 metric rows with provenance."""
    return [Row(run_id=f"h-{seed}", scenario="bench[x=1]", scenario_hash="h", seed=seed, tier="open-weight",
                model="tiny-gpt2", task="synthetic-clinical", method="lora", defenses="none", attack="none",
                metric=f"utility.m{j}", value=0.5, git_commit="0" * 40, packages="torch=2.x transformers=4.x",
                device="cpu", wall_s=1.0, peak_mem_mb=100.0, extra={"training_key": "k" * 16}) for j in range(ROWS_PER_RUN)]


def _store_of(tmp_path, runs: int) -> ResultStore:
    """A store already holding ``runs`` runs, written in one go (building it is not what is measured)."""
    lines = (json.dumps({"record": "runs", "keys": [["h", s]], "rows": [asdict(r) for r in _run(s)]}, sort_keys=True)
             for s in range(runs))
    tmp_path.mkdir(parents=True)
    (tmp_path / "results.jsonl").write_text("".join(line + "\n" for line in lines))
    return ResultStore(tmp_path, writer=True)  # not closed: that would derive a CSV nobody reads here


def _median_append(store: ResultStore, seeds) -> float:
    times = []
    for _ in range(ROUNDS):
        rows, seed = _run(next(seeds)), next(seeds)
        start = time.perf_counter()
        store.append(rows, replace=("h", seed))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_bench_append_10th_vs_10000th_run(benchmark, tmp_path):
    small, large = _store_of(tmp_path / "small", 9), _store_of(tmp_path / "large", 9_999)
    seeds = count(10**6)
    tenth = _median_append(small, seeds)
    ten_thousandth = _median_append(large, seeds)
    benchmark.pedantic(lambda: large.append(_run(next(seeds))), rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update({"append_10th_s": tenth, "append_10000th_s": ten_thousandth,
                                 "ratio_10000th_over_10th": ten_thousandth / tenth})
