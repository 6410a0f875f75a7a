"""How long would a sweep of these files take, by the run times a store recorded? (Issue 15 item 5's figure.)

    python -m bench.tools.bench_budget STORE FILE [FILE ...] [--workers 2] [--preset cpu-small] [--seeds N]

Plans the sweep as ``bench run FILE ... --preset PRESET`` into an empty store would (the grid's runs, preceded
by the clean twins its poisoning runs need, each (scenario, seed) run once however many files plan it:
``bench.engine.sweep.planned_runs`` and ``pending_jobs``), looks each run up in STORE (a folder with
``results.jsonl``, e.g. ``results/store/results.jsonl.xz`` decompressed) and prints, per file and in all: the runs
the file plans, the runs the sweep runs for it (a run shared with a later file counts there), those STORE lacks,
and the sum and median of the recorded ``wall_s`` (one single-threaded run's wall time as it was recorded); then,
for the whole sweep, the wall time of ``--workers`` workers that each take the next run as soon as they are free
(what ``--executor pool`` does). A run STORE lacks adds nothing: the estimate is then a lower bound, and says so.
``--seeds N`` plans seeds 0..N-1 of every file instead of the files' seeds, as ``bench run --seeds N`` would: with
N = 5, the fewest seeds issue 15 allows a Table 4 cell, the smallest sweep of these files that Table 4 may rest on.

It reads what was recorded, when and where it was recorded: runs timed on other machines, under load or
before a change of regime keep their old times, and a run that built an artefact later runs read from the
memo (an inversion decoder) carries the build. Use it to see where a sweep's time goes and to check a
budget before running; a published time still comes from timing the sweep itself.
"""

from __future__ import annotations

import argparse
import heapq
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FileBudget:
    """One scenario file's share of the planned sweep."""

    file: str
    planned: int = 0
    """The (scenario, seed) runs the file plans, its clean twins included."""
    runs: int = 0
    """The planned runs the sweep runs for this file: a run that several files plan runs once, at its last place
    (``bench.engine.sweep.pending_jobs``), and counts for that file only."""
    walls: list[float] = field(default_factory=list)
    """The recorded ``wall_s`` of this file's runs that the store holds, in the sweep's order."""

    @property
    def missing(self) -> int:
        return self.runs - len(self.walls)


def recorded_walls(rows: Sequence[dict]) -> dict[tuple[str, int], float]:
    """(scenario hash, seed) -> the run's ``wall_s``, from a store's rows (the last stored reading of a run)."""
    walls: dict[tuple[str, int], float] = {}
    for row in rows:
        if row.get("wall_s") is not None:
            walls[(str(row["scenario_hash"]), int(row["seed"]))] = float(row["wall_s"])
    return walls


def pool_wall(walls: Sequence[float], workers: int) -> float:
    """The wall time of ``workers`` workers each taking the next run in order as soon as it is free."""
    free_at = [0.0] * workers
    for wall in walls:
        heapq.heapreplace(free_at, free_at[0] + wall)
    return max(free_at)


def budget(files: Sequence[str], store_rows: Sequence[dict], preset: str,
           seeds: int | None = None) -> tuple[list[FileBudget], list[float]]:
    """Per file, its planned runs and their recorded times; and every found run's time in the sweep's order.
    ``seeds``: seeds 0..seeds-1 of every file instead of its own (``bench run --seeds``)."""
    from bench.engine.sweep import pending_jobs, planned_runs
    from bench.spec.presets import apply
    from bench.spec.scenario import load_many

    scenarios = apply(load_many(list(files)), preset)
    walls = recorded_walls(store_rows)
    with _empty_store() as empty:
        planned = planned_runs(scenarios, empty, seeds)
    by_file = {str(Path(f)): FileBudget(file=str(f)) for f in files}

    def entry(scenario) -> FileBudget:
        return by_file.setdefault(str(Path(scenario.file)), FileBudget(file=scenario.file))

    for scenario, _ in planned:
        entry(scenario).planned += 1
    order: list[float] = []
    for job in pending_jobs(planned, set(), force=False):
        entry(job.scenario).runs += 1
        wall = walls.get((job.scenario.hash, job.seed))
        if wall is not None:
            entry(job.scenario).walls.append(wall)
            order.append(wall)
    return list(by_file.values()), order


@contextmanager
def _empty_store() -> Iterator[object]:
    """A ResultStore over a fresh temporary folder: what ``bench run`` into a new ``--out`` starts from."""
    from bench.store.results import ResultStore

    with tempfile.TemporaryDirectory(prefix="tierbench-budget-") as folder:
        yield ResultStore(folder)


def _hours(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def report(entries: Sequence[FileBudget], order: Sequence[float], workers: int) -> list[str]:
    width = max(len(e.file) for e in entries)
    lines = [f"{'file':<{width}}  planned     runs  missing  run time (s)  median run (s)"]
    for e in entries:
        median = f"{statistics.median(e.walls):>14.1f}" if e.walls else f"{'':>14}"
        lines.append(f"{e.file:<{width}}  {e.planned:>7}  {e.runs:>7}  {e.missing:>7}  {sum(e.walls):>12,.0f}  {median}")
    planned, runs = sum(e.planned for e in entries), sum(e.runs for e in entries)
    missing = sum(e.missing for e in entries)
    lines.append(f"{'all':<{width}}  {planned:>7}  {runs:>7}  {missing:>7}  {sum(order):>12,.0f}")
    wall = pool_wall(order, workers)
    bound = " (a lower bound: runs are missing)" if missing else ""
    lines.append(f"{workers} workers taking runs in the sweep's order: {wall:,.0f} s wall, {_hours(wall)}{bound}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.bench_budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="a results folder (with results.jsonl)")
    parser.add_argument("files", nargs="+", help="the scenario files of the sweep")
    parser.add_argument("--workers", type=int, default=2, help="pool workers (default 2)")
    parser.add_argument("--preset", default="cpu-small", help="size overlay, as bench run's (default cpu-small)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="plan seeds 0..N-1 of every file instead of the files' seeds, as bench run's --seeds")
    args = parser.parse_args(argv)
    from bench.api.errors import UserError
    from bench.store.results import ResultStore

    if not Path(args.store, "results.jsonl").is_file():
        print(f"{args.store}: no results.jsonl here (decompress results/store/results.jsonl.xz into a folder)",
              file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"--workers: {args.workers} is not allowed; give 1 or more", file=sys.stderr)
        return 2
    if args.seeds is not None and not 1 <= args.seeds <= 1000:
        print(f"--seeds: {args.seeds} is not allowed; give 1 to 1000, as bench run's --seeds", file=sys.stderr)
        return 2
    try:
        entries, order = budget(args.files, ResultStore(args.store).rows(), args.preset, args.seeds)
    except UserError as error:  # a scenario file's mistake: the message names the file and key
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report(entries, order, args.workers)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
