"""Running many scenarios x seeds into one results store, resuming where a killed sweep stopped."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bench.api.display import short_name
from bench.api.vocabulary import JsonObject, RunStatus
from bench.engine.executors import Executor, Job, SerialExecutor
from bench.engine.runner import execute
from bench.spec.scenario import Scenario
from bench.store.derived import add_utility_drops
from bench.store.results import ResultStore


def quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="opacus")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def sweep(scenarios: list[Scenario], out: str | Path, *, seeds: int | None = None, force: bool = False,
          show_progress: bool = True, figures: str | None = None, executor: Executor | None = None) -> ResultStore:
    """Run the grid into ``out``; ``executor`` (default serial) decides where runs go, the store is written
    here only (each finished run's rows, as they arrive)."""
    from tqdm import tqdm

    quiet_libraries()
    store = ResultStore(out, writer=True)  # locks --out and proves it writable before the first run
    runs = planned_runs(scenarios, store, seeds)
    jobs = pending_jobs(runs, store.done(), force)
    with tqdm(total=len(runs), initial=len(runs) - len(jobs), desc="runs", disable=not show_progress,
              position=0) as bar:
        def name(job: Job) -> None:
            bar.set_postfix_str(short_name(job.scenario.name, 60))  # the name, not its cut-off tail

        def done(job: Job, rows: list) -> None:
            store.append(rows, replace=(job.scenario.hash, job.seed))
            name(job)
            bar.update(1)

        (executor or SerialExecutor()).run(jobs, execute, done, figures=figures, show_progress=show_progress,
                                           started=name)
    add_utility_drops(store)
    store.close()  # writes results.csv from the log and releases the lock
    return store


def pending_jobs(runs: list[tuple[Scenario, int]], done: set[tuple[str, int]], force: bool) -> list[Job]:
    """The runs still to do, each once (a run planned twice keeps its last place, as a rerun would)."""
    last = {(s.hash, seed): i for i, (s, seed) in enumerate(runs)}
    return [Job(i, s, seed) for i, (s, seed) in enumerate(runs)
            if last[(s.hash, seed)] == i and (force or (s.hash, seed) not in done)]


def planned_runs(scenarios: list[Scenario], store: ResultStore, seeds: int | None = None) -> list[tuple[Scenario, int]]:
    """The (scenario, seed) runs a sweep covers: the grid's, preceded by the clean twins it lacks."""
    runs = [(s, seed) for s in scenarios for seed in (range(seeds) if seeds else s.seeds)]
    return _clean_twins(runs, store) + runs


def _clean_twins(runs: list[tuple[Scenario, int]], store: ResultStore) -> list[tuple[Scenario, int]]:
    """Attacker-free runs the poisoning runs need for ``poison.utility_drop`` and the grid lacks.

    A twin is any run that trains the same model without attackers (same ``training_key``), so a grid
    that already has the attacker-free cell, or a store that already ran it, costs nothing extra.
    """
    present = {(s.training_key, seed) for s, seed in runs}
    present |= {(r["extra"].get("training_key"), int(r["seed"])) for r in store.rows() if r.get("status") == RunStatus.OK}
    twins: dict[tuple[str, int], tuple[Scenario, int]] = {}
    for scenario, seed in runs:
        key = (scenario.clean_training_key, seed)
        if scenario.training_attacks and key not in present and key not in twins:
            twins[key] = (scenario.without_attacks(), seed)
    return list(twins.values())


@dataclass
class Summary:
    """How the runs of one sweep ended, read back from the store."""

    counts: dict[str, int] = field(default_factory=dict)
    """Runs per status: ``ok``, ``failed`` (the run or one of its attacks), ``incompatible``."""
    failed: list[str] = field(default_factory=list)
    """One line per failed run: scenario, seed and the reason."""
    not_applicable: int = 0
    """Attacks ruled out at evaluation time (recorded ``not-applicable`` with the reason)."""

    def lines(self) -> list[str]:
        run_statuses = (RunStatus.OK, RunStatus.FAILED, RunStatus.INCOMPATIBLE)  # not-applicable is an attack's, counted below
        counts = ", ".join(f"{self.counts.get(k, 0)} {k}" for k in run_statuses)
        extra = f"; {self.not_applicable} attacks not applicable" if self.not_applicable else ""
        lines = [f"runs: {counts}{extra}"]
        if self.failed:
            lines += ["failed runs (rerun the same command to retry them):"] + [f"  {line}" for line in self.failed]
        return lines


def summarize(store: ResultStore, runs: list[tuple[Scenario, int]]) -> Summary:
    """The status of each of ``runs`` in ``store``: failed when the run or any of its attacks failed."""
    by_run: dict[tuple[str, int], list[JsonObject]] = {}
    for row in store.rows():
        by_run.setdefault((row["scenario_hash"], int(row["seed"])), []).append(row)
    summary = Summary()
    for scenario, seed in _unique(runs):
        rows = by_run.get((scenario.hash, seed)) or [{"attack": "none", "status": RunStatus.FAILED, "error": "no result recorded"}]
        failures = [r for r in rows if r["status"] == RunStatus.FAILED]
        status = RunStatus.FAILED if failures else rows[0]["status"]
        summary.counts[status] = summary.counts.get(status, 0) + 1
        summary.not_applicable += sum(r["status"] == RunStatus.NOT_APPLICABLE for r in rows)
        for r in failures:
            who = "" if r["attack"] == "none" else f"attack {r['attack']}: "
            summary.failed.append(f"{scenario.name} seed {seed}: {who}{r['error']}")
    return summary


def _unique(runs: list[tuple[Scenario, int]]) -> list[tuple[Scenario, int]]:
    return list({(s.hash, seed): (s, seed) for s, seed in runs}.values())
