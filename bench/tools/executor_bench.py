"""Wall time of one grid under each executor, and whether their metric rows agree (issues 16 and 18).

    OMP_NUM_THREADS=1 python -m bench.tools.executor_bench [--workers 2] [--executors serial pool ray] [--keep DIR]

runs ``GRID`` (24 smoke-sized runs: 2 tiers x 2 methods x 2 attack sets x 3 seeds, tiny-gpt2) into a
fresh folder per executor, then prints one line per executor: wall seconds, seconds per run, the ratio
to serial, and whether its non-cost metric rows equal serial's row for row. Serial runs in this
process with ``torch.set_num_threads(threads)`` (1 by default, the workers' count), so all three
do the same arithmetic. Zoo models are pretrained before the clock starts. Time it on a quiet
machine: under load the figures say nothing.

From a measured per-run time ``t`` and ``W`` workers, a grid of ``R`` independent runs takes about
``ceil(R / W) * t`` plus the executor's start (the pool spawns its workers, Ray starts an instance;
both inside ``wall_s``); on a 4-GPU node with k runs per GPU (``bench.engine.executors_ray.gpu_fraction``)
``W`` is 4k when the node has as many cores to feed them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used
    from bench.engine.executors import Executor

GRID = """\
name: executor-grid
description: 24 smoke-sized runs, the grid the executors are compared on.
tier: open-weight
model: tiny-gpt2
task:
  name: synthetic-clinical
  params: {num_classes: 3, max_length: 24}
method: lora
federation: {clients: 2, clients_per_round: 2, rounds: 1, local_steps: 1, batch_size: 4, examples_per_client: 8,
             eval_examples: 16, mia_candidates: 8}
attacks: [mia-loss]
seeds: [0, 1, 2]
matrix:
  tier: [open-source, open-weight]
  method: [fft, lora]
  attacks: [[mia-loss], [mia-zlib]]
"""


def write_grid(folder: Path) -> Path:
    path = folder / "executor-grid.yaml"
    path.write_text(GRID, encoding="utf-8")
    return path


def metric_rows(out: Path) -> dict[tuple, tuple]:
    """Every non-cost row of a store, keyed by (run, attack, metric): what must not depend on the executor."""
    from bench.store.results import ResultStore

    return {(r["scenario_hash"], int(r["seed"]), r["attack"], r["metric"]):
            (r["value"], r["ci_low"], r["ci_high"], r["status"], r["error"])
            for r in ResultStore(out).rows() if not r["metric"].startswith("cost.")}


def executor(name: str, workers: int) -> Executor:
    from bench.engine.executors import executor_class

    cls = executor_class(name)
    return cls() if name == "serial" else cls(cls.Config(workers=workers))


def timed_sweep(name: str, scenarios: list, out: Path, workers: int, threads: int) -> float:
    import torch

    from bench.engine.sweep import sweep

    before = torch.get_num_threads()
    if name == "serial":
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        sweep(scenarios, out, show_progress=False, executor=executor(name, workers))
    finally:
        torch.set_num_threads(before)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the serial sweep")
    parser.add_argument("--executors", nargs="+", default=["serial", "pool", "ray"])
    parser.add_argument("--keep", help="write the stores under this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    from bench.engine.executors import Job, prepare_models
    from bench.spec.scenario import load

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        scenarios = load(write_grid(folder))
        prepare_models([Job(0, s, 0) for s in scenarios])
        runs = sum(len(s.seeds) for s in scenarios)
        walls: dict[str, float] = {}
        print(f"grid: {runs} runs; workers: {args.workers}; serial threads: {args.threads}")
        for name in args.executors:
            walls[name] = timed_sweep(name, scenarios, folder / name, args.workers, args.threads)
            reference = metric_rows(folder / args.executors[0])
            same = metric_rows(folder / name) == reference
            ratio = walls[name] / walls[args.executors[0]]
            print(f"{name:7s} wall_s={walls[name]:8.2f} per_run_s={walls[name] / runs:6.2f} "
                  f"ratio_to_{args.executors[0]}={ratio:5.2f} rows_equal_{args.executors[0]}={same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
