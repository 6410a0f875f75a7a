"""Executors spread a sweep's runs; the driver alone writes the store (issues 16 and 18).

Contracts: the pool's (and Ray's) metric rows equal a serial sweep's at the same thread count, failures
included; a worker killed mid-run leaves its run to be retried and the grid completes; a resumed
sweep runs only what is not done, and the progress line counts the runs finished across workers.
The run functions below stand in for ``bench.engine.runner.execute`` where training would only cost time:
workers import them from this module (a spawned worker gets the parent's ``sys.path``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import bench.engine.sweep as sweep_module
from bench.cli import main
from bench.engine.executors import (
    AutoExecutor,
    Job,
    PoolConfig,
    PoolExecutor,
    SerialExecutor,
    executor_class,
    tiny_cpu_run,
)
from bench.spec.scenario import load
from bench.store.results import ResultStore, Row
from bench.tools.executor_bench import GRID, metric_rows, write_grid
from bench.world.models import torch_threads
from tests.helpers import make_scenario, scenario_dict, write_scenario

KILL_DIR = "TIERBENCH_TEST_KILL_DIR"
TINY = {"clients": 2, "clients_per_round": 2, "rounds": 1, "local_steps": 1, "batch_size": 4,
        "examples_per_client": 8, "eval_examples": 16, "mia_candidates": 8}


def fake_run(scenario, seed, **kwargs):
    """One ok row, no training; logs each start to $TIERBENCH_TEST_KILL_DIR/starts."""
    folder = Path(os.environ[KILL_DIR])
    with open(folder / "starts", "a") as log:
        log.write(f"{scenario.hash} {seed}\n")
    return [Row(run_id=f"{scenario.hash}-{seed}", scenario=scenario.name, scenario_hash=scenario.hash, seed=seed,
                tier="open-weight", model="m", task="t", method="lora", defenses="none", attack="none",
                metric="utility.accuracy", value=seed / 10)]


def killable_run(scenario, seed, **kwargs):
    """``fake_run``, except that seed 1's first start writes its pid and waits to be killed."""
    folder = Path(os.environ[KILL_DIR])
    if seed == 1 and not (folder / "killed").exists():
        fake_run(scenario, seed)
        (folder / "pid").write_text(str(os.getpid()))
        time.sleep(120)
        raise AssertionError("not killed")
    return fake_run(scenario, seed)


def raising_run(scenario, seed, **kwargs):
    raise RuntimeError(f"boom at seed {seed}")


def starts(folder: Path) -> list[str]:
    path = folder / "starts"
    return path.read_text().splitlines() if path.exists() else []


def kill_when_started(folder: Path) -> threading.Thread:
    """A thread that SIGKILLs the process running seed 1 as soon as it says its pid."""
    def killer() -> None:
        deadline = time.monotonic() + 300
        while not (folder / "pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        (folder / "killed").write_text("yes")  # before the kill: the retry must run normally
        os.kill(int((folder / "pid").read_text()), signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread


def jobs_for(scenario, seeds) -> list[Job]:
    return [Job(i, scenario, seed) for i, seed in enumerate(seeds)]


def run_serially(scenarios, out) -> None:
    """A serial sweep with one torch thread, the workers' count: the same arithmetic as theirs."""
    with torch_threads(1):
        sweep_module.sweep(scenarios, out, show_progress=False)


def test_pool_rows_equal_serial_rows_failures_included(tmp_path):
    ok = write_scenario(tmp_path, scenario_dict(name="ok", federation=TINY, attacks=["mia-loss"], seeds=[0, 1],
                                                task={"name": "synthetic-clinical",
                                                      "params": {"num_classes": 3, "max_length": 24}}), "ok.yaml")
    broken = write_scenario(tmp_path, scenario_dict(name="broken", federation=TINY, seeds=[0],
                                                    model={"name": "hf", "params": {"path": str(tmp_path / "gone")}}),
                            "broken.yaml")
    scenarios = load(ok) + load(broken)
    run_serially(scenarios, tmp_path / "serial")
    # One worker runs all three in turn: what a run leaves in its process must not change the next one.
    # (Two workers on the 24-run grid: the test further below.)
    sweep_module.sweep(scenarios, tmp_path / "pool", show_progress=False,
                       executor=PoolExecutor(PoolConfig(workers=1)))
    serial, pool = metric_rows(tmp_path / "serial"), metric_rows(tmp_path / "pool")
    assert pool == serial
    statuses = {status for (_, _, _, status, _) in serial.values()}
    assert statuses == {"ok", "failed"}  # the grid did hold an ok run and a failed one
    assert any("gone" in error for (*_, status, error) in serial.values() if status == "failed")


def test_a_killed_pool_worker_leaves_its_run_to_be_retried(tmp_path, monkeypatch):
    monkeypatch.setenv(KILL_DIR, str(tmp_path))
    scenario = make_scenario(tmp_path)
    finished: dict[int, list] = {}
    killer = kill_when_started(tmp_path)
    PoolExecutor(PoolConfig(workers=2)).run(jobs_for(scenario, [0, 1, 2, 3]), killable_run,
                                            lambda job, rows: finished.setdefault(job.seed, rows))
    killer.join(timeout=10)
    assert sorted(finished) == [0, 1, 2, 3]
    assert all(rows[0].status == "ok" for rows in finished.values())  # seed 1 too: its retry ran to the end
    assert sorted(starts(tmp_path)).count(f"{scenario.hash} 1") == 2   # killed once, started again


def test_a_run_that_keeps_killing_its_worker_is_recorded_failed_and_the_rest_complete(tmp_path, monkeypatch):
    monkeypatch.setenv(KILL_DIR, str(tmp_path))
    scenario = make_scenario(tmp_path)
    finished: dict[int, list] = {}
    PoolExecutor(PoolConfig(workers=1, attempts=2)).run(jobs_for(scenario, [0, 1]), suicidal_run,
                                                        lambda job, rows: finished.setdefault(job.seed, rows))
    assert [r.status for r in finished[0]] == ["ok"]
    (row,) = finished[1]
    assert row.status == "failed" and "died 2 times" in row.error and row.scenario_hash == scenario.hash


def suicidal_run(scenario, seed, **kwargs):
    if seed == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return fake_run(scenario, seed)


def test_a_raising_run_function_fails_its_run_not_the_worker(tmp_path):
    scenario = make_scenario(tmp_path)
    finished: dict[int, list] = {}
    PoolExecutor(PoolConfig(workers=1)).run(jobs_for(scenario, [0, 1]), raising_run,
                                            lambda job, rows: finished.setdefault(job.seed, rows))
    assert [finished[s][0].error for s in (0, 1)] == ["RuntimeError: boom at seed 0", "RuntimeError: boom at seed 1"]


DRIVER = """
import pathlib
from bench.engine.executors import PoolConfig, PoolExecutor
from tests.helpers import make_scenario
from tests.test_executors import jobs_for, killable_run
scenario = make_scenario(pathlib.Path({folder!r}))
PoolExecutor(PoolConfig(workers=1)).run(jobs_for(scenario, [1]), killable_run, lambda job, rows: None)
"""


def running(pid: int) -> bool:
    """Whether ``pid`` still computes (an exited orphan that nobody reaped yet is a zombie: not running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_killed_driver_takes_its_pool_workers_with_it(tmp_path):
    # SIGKILL skips every cleanup of the driver (daemon workers are stopped only at a normal exit): the worker,
    # 120 s into nothing, must notice by itself, or it computes on, unrecorded, beside the next sweep
    root = Path(__file__).resolve().parents[1]
    driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(folder=str(tmp_path))], cwd=root,
                              env={**os.environ, KILL_DIR: str(tmp_path)})
    deadline = time.monotonic() + 120
    while not (tmp_path / "pid").exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "pid").exists(), "the worker never started its run"
    worker = int((tmp_path / "pid").read_text())
    assert running(worker)
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 15
    while running(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if running(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail(f"worker {worker} kept running 15 s after its driver was killed")


def test_resume_runs_only_what_is_not_done_and_the_bar_counts_every_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KILL_DIR, str(tmp_path))
    monkeypatch.setattr(sweep_module, "execute", fake_run)  # pickled by name: the workers import it from here
    scenario = make_scenario(tmp_path, seeds=[0, 1, 2, 3])
    out = tmp_path / "out"
    ResultStore(out).append(fake_run(scenario, 2))  # seed 2 finished before
    (tmp_path / "starts").unlink()
    sweep_module.sweep([scenario], out, executor=PoolExecutor(PoolConfig(workers=2)))
    assert sorted(starts(tmp_path)) == sorted(f"{scenario.hash} {s}" for s in (0, 1, 3))
    assert ResultStore(out).done() == {(scenario.hash, s) for s in range(4)}
    assert "4/4" in capsys.readouterr().err  # the progress line: one finished before + three across workers
    sweep_module.sweep([scenario], out, show_progress=False, executor=PoolExecutor(PoolConfig(workers=2)))
    assert len(starts(tmp_path)) == 3  # everything done: nothing starts


def test_auto_pools_cpu_zoo_runs_and_keeps_other_runs_serial(tmp_path, monkeypatch):
    monkeypatch.setattr("bench.engine.executors.cores", lambda: 4)
    zoo = make_scenario(tmp_path, device="cpu")
    hf = make_scenario(tmp_path, model={"name": "hf", "params": {"path": "Qwen/Qwen2.5-0.5B"}}, device="cpu")
    assert tiny_cpu_run(zoo) and not tiny_cpu_run(hf)
    chosen = AutoExecutor().choose([Job(0, zoo, 0), Job(1, zoo, 1)])
    assert isinstance(chosen, PoolExecutor) and chosen.workers(10) == 4 and chosen.config.threads == 1
    assert isinstance(AutoExecutor().choose([Job(0, zoo, 0), Job(1, hf, 0)]), SerialExecutor)
    monkeypatch.setattr("bench.engine.executors.cores", lambda: 1)
    assert isinstance(AutoExecutor().choose([Job(0, zoo, 0)]), SerialExecutor)


def test_executor_flags_that_do_not_apply_exit_2(tmp_path, capsys):
    path = write_scenario(tmp_path, scenario_dict())
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--workers", "2"]) == 2
    assert "--workers does not apply to the serial executor" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--executor", "pool", "--address", "x:1"]) == 2
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--executor", "threads"]) == 2
    assert "allowed: auto, pool, ray, serial" in capsys.readouterr().err
    assert executor_class("ray").Config().threads == 1


def test_gpu_fraction_from_device_and_model_size(tmp_path):
    from bench.engine.executors_ray import gpu_fraction, run_memory_gb

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": 896, "num_hidden_layers": 24, '
                                       '"intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": true}')
    hf = {"name": "hf", "params": {"path": str(model), "dtype": "bfloat16"}}
    on_gpu = make_scenario(tmp_path, model=hf, device="cuda")
    need = run_memory_gb(on_gpu.model)
    assert 4.0 < need < 6.0  # a 0.5B-parameter model in bf16: ~4 GB of training state + 1 GB
    assert gpu_fraction(on_gpu, 24.0, True) == pytest.approx(1 / 4, abs=1e-4)  # 4 runs of ~5 GB in 24 GB
    assert gpu_fraction(on_gpu, 8.0, True) == 1.0                              # one fits: a whole GPU
    assert gpu_fraction(on_gpu, 0.0, True) == 1.0                              # memory unknown: a whole GPU
    assert gpu_fraction(on_gpu, 1000.0, True) == 0.125                         # at most 8 runs per GPU
    assert gpu_fraction(make_scenario(tmp_path, model=hf, device="cpu"), 24.0, True) == 0.0
    auto = make_scenario(tmp_path, model=hf, device="auto")
    assert gpu_fraction(auto, 24.0, False) == 0.0 and gpu_fraction(auto, 24.0, True) > 0


def test_a_killed_ray_worker_leaves_its_run_to_be_retried(tmp_path, monkeypatch):
    """A local Ray instance starts: about 8 s on 2 idle cores (in the default suite, as CI runs it)."""
    pytest.importorskip("ray")
    from bench.engine.executors_ray import RayConfig, RayExecutor

    monkeypatch.setenv(KILL_DIR, str(tmp_path))
    monkeypatch.setenv("RAY_TMPDIR", str(Path(__file__).resolve().parents[1] / ".cache" / "ray"))
    scenario = make_scenario(tmp_path)
    finished: dict[int, list] = {}
    killer = kill_when_started(tmp_path)
    RayExecutor(RayConfig(workers=2)).run(jobs_for(scenario, [0, 1, 2, 3]), killable_run,
                                          lambda job, rows: finished.setdefault(job.seed, rows))
    killer.join(timeout=10)
    assert sorted(finished) == [0, 1, 2, 3] and all(rows[0].status == "ok" for rows in finished.values())
    assert sorted(starts(tmp_path)).count(f"{scenario.hash} 1") == 2


def test_the_24_run_grid_gives_the_same_rows_serially_with_the_pool_and_with_ray(tmp_path, monkeypatch):
    """3 x 24 tiny runs plus a Ray start: about 40 s on 2 idle cores (in the default suite, as CI runs it)."""
    pytest.importorskip("ray")
    from bench.engine.executors_ray import RayConfig, RayExecutor

    monkeypatch.setenv("RAY_TMPDIR", str(Path(__file__).resolve().parents[1] / ".cache" / "ray"))
    scenarios = load(write_grid(tmp_path))
    assert sum(len(s.seeds) for s in scenarios) == 24 and "tiny-gpt2" in GRID
    run_serially(scenarios, tmp_path / "serial")
    sweep_module.sweep(scenarios, tmp_path / "pool", show_progress=False, executor=PoolExecutor(PoolConfig(workers=2)))
    sweep_module.sweep(scenarios, tmp_path / "ray", show_progress=False, executor=RayExecutor(RayConfig(workers=2)))
    serial = metric_rows(tmp_path / "serial")
    assert len({key[:2] for key in serial}) == 24 and all(v[3] == "ok" for v in serial.values())
    assert metric_rows(tmp_path / "pool") == serial
    assert metric_rows(tmp_path / "ray") == serial
