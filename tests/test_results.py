import csv

from bench.engine.runner import execute
from bench.engine.sweep import sweep
from bench.store.results import COLUMNS, ResultStore, Row
from tests.helpers import make_scenario


def _row(seed, metric="utility.accuracy", value=0.5):
    return Row(run_id=f"h-{seed}", scenario="s", scenario_hash="h", seed=seed, tier="open-weight", model="m", task="t",
               method="lora", defenses="none", attack="none", metric=metric, value=value)


def test_append_is_atomic_and_replace_drops_only_that_run(tmp_path):
    store = ResultStore(tmp_path)
    store.append([_row(0), _row(0, "cost.wall_s", 1.0)])
    store.append([_row(1, value=float("nan"))])
    assert store.done() == {("h", 0), ("h", 1)}
    store.append([_row(0, value=0.9)], replace=("h", 0))
    rows = store.rows()
    assert [(r["seed"], r["value"]) for r in rows if r["seed"] == 0] == [(0, 0.9)]
    assert any(r["seed"] == 1 and r["value"] != r["value"] for r in rows)  # NaN survives the round trip
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".results.lock"], "no temporaries left"
    with store.csv.open() as handle:
        header = next(csv.reader(handle))
    assert header == COLUMNS


def test_rows_carry_provenance(tmp_path):
    rows = execute(make_scenario(tmp_path, federation={"rounds": 1, "local_steps": 1}), 0)
    row = rows[0]
    assert row.git_commit and "torch=" in row.packages and row.device == "cpu" and row.wall_s > 0
    assert row.peak_mem_mb > 0 and row.schema == 1
    assert {"utility.accuracy", "utility.macro_f1", "cost.bytes_up", "cost.wall_s"} <= {r.metric for r in rows}


def test_sweep_skips_done_runs_and_force_reruns(tmp_path, monkeypatch):
    scenario = make_scenario(tmp_path, federation={"rounds": 1, "local_steps": 1})
    calls = []
    import bench.engine.sweep as sweep_module

    real = sweep_module.execute

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "execute", counting)
    out = tmp_path / "out"
    sweep([scenario], out, seeds=2, show_progress=False)
    sweep([scenario], out, seeds=2, show_progress=False)
    assert calls == [0, 1]
    sweep([scenario], out, seeds=1, force=True, show_progress=False)
    assert calls == [0, 1, 0]
    rows = ResultStore(out).rows()
    assert {r["seed"] for r in rows} == {0, 1}
    assert len(rows) == len({(r["seed"], r["metric"], r["attack"]) for r in rows}), "the rerun superseded seed 0"
