"""bench.tools.bench_budget: the sweep's plan priced by a store's recorded run times (issue 15 item 5's figure)."""

from __future__ import annotations

from pathlib import Path

from bench.spec.scenario import load_many
from bench.tools import bench_budget

SCENARIO = """name: {name}
tier: open-weight
model: tiny-gpt2
task: {{name: synthetic-clinical, params: {{num_classes: 3, max_length: 32}}}}
method: lora
federation: {{clients: 2, clients_per_round: 2, rounds: 1, local_steps: 1, batch_size: 2, examples_per_client: 8}}
attacks: [mia-loss]
seeds: {seeds}
"""


def _files(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    # the same cell under two names (a name is a label, not part of the hash): seed 1 is planned by both
    first.write_text(SCENARIO.format(name="first", seeds="[0, 1]"))
    second.write_text(SCENARIO.format(name="second", seeds="[1, 2]"))
    return first, second


def test_pool_wall_is_greedy_list_scheduling():
    # two workers take 3 and 3, then 2 and 2 (both free at 3), then the last 2 at 5: done at 7
    assert bench_budget.pool_wall([3, 3, 2, 2, 2], workers=2) == 7
    assert bench_budget.pool_wall([3, 3, 2, 2, 2], workers=1) == 12
    assert bench_budget.pool_wall([5, 1, 1, 1, 1, 1], workers=2) == 5
    assert bench_budget.pool_wall([], workers=2) == 0


def test_a_run_two_files_plan_is_priced_once_at_its_last_place(tmp_path):
    first, second = _files(tmp_path)
    cell = load_many([str(first)])[0].hash
    assert load_many([str(second)])[0].hash == cell
    rows = [{"scenario_hash": cell, "seed": 0, "wall_s": 10.0, "metric": "a"},
            {"scenario_hash": cell, "seed": 0, "wall_s": 10.0, "metric": "b"},  # every row of a run carries its wall
            {"scenario_hash": cell, "seed": 1, "wall_s": 20.0, "metric": "a"},
            {"scenario_hash": "another-cell", "seed": 2, "wall_s": 99.0, "metric": "a"}]
    entries, order = bench_budget.budget([str(first), str(second)], rows, "cpu-small")
    by_name = {Path(e.file).name: e for e in entries}
    assert (by_name["first.yaml"].planned, by_name["first.yaml"].runs, by_name["first.yaml"].walls) == (2, 1, [10.0])
    assert (by_name["second.yaml"].planned, by_name["second.yaml"].runs, by_name["second.yaml"].walls) == (2, 2, [20.0])
    assert by_name["second.yaml"].missing == 1  # seed 2 of this cell is not in the store
    assert order == [10.0, 20.0]
    lines = bench_budget.report(entries, order, workers=2)
    assert lines[-2].split() == ["all", "4", "3", "1", "30"]  # planned, run, missing, run-seconds
    assert "20 s wall" in lines[-1] and "lower bound" in lines[-1]  # two workers: 10 and 20 side by side


def test_seeds_replaces_every_files_seeds_as_bench_run_does(tmp_path):
    first, second = _files(tmp_path)
    cell = load_many([str(first)])[0].hash
    rows = [{"scenario_hash": cell, "seed": seed, "wall_s": 1.0 + seed, "metric": "a"} for seed in range(4)]
    entries, order = bench_budget.budget([str(first), str(second)], rows, "cpu-small", seeds=3)
    by_name = {Path(e.file).name: e for e in entries}
    # both files now plan seeds 0-2 of the one cell: each run is priced once, at the second file's place
    assert (by_name["first.yaml"].planned, by_name["first.yaml"].runs) == (3, 0)
    assert (by_name["second.yaml"].planned, by_name["second.yaml"].runs, by_name["second.yaml"].walls) == (3, 3, [1.0, 2.0, 3.0])
    assert order == [1.0, 2.0, 3.0]  # seed 3, outside 0..2, is not priced


def test_the_command_prices_a_store_and_refuses_bad_input(tmp_path, capsys):
    first, _ = _files(tmp_path)
    store = tmp_path / "store"
    assert bench_budget.main([str(store), str(first)]) == 2
    assert "no results.jsonl" in capsys.readouterr().err
    store.mkdir()
    (store / "results.jsonl").write_text("")
    assert bench_budget.main([str(store), str(first), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert bench_budget.main([str(store), str(first), "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(SCENARIO.format(name="bad", seeds="[0]") + "federaton: {}\n")
    assert bench_budget.main([str(store), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "federaton" in err
    assert bench_budget.main([str(store), str(first)]) == 0
    out = capsys.readouterr().out
    assert "first.yaml" in out and "lower bound" in out  # an empty store holds none of the two runs
