"""Running many scenarios x seeds into one results store, resuming where a killed sweep stopped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.derived import add_utility_drops
from bench.display import short_name
from bench.results import ResultStore
from bench.runner import execute
from bench.scenario import Scenario


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
          show_progress: bool = True, figures: str | None = None) -> ResultStore:
    from tqdm import tqdm

    quiet_libraries()
    store = ResultStore(out)
    done = store.done()
    runs = [(s, seed) for s in scenarios for seed in (range(seeds) if seeds else s.seeds)]
    runs = _clean_twins(runs, store) + runs
    with tqdm(total=len(runs), desc="runs", disable=not show_progress, position=0) as bar:
        for scenario, seed in runs:
            bar.set_postfix_str(short_name(scenario.name, 60))  # the name, not its cut-off tail
            if force or (scenario.hash, seed) not in done:
                with tqdm(total=scenario.federation.rounds, desc="rounds", leave=False, disable=not show_progress,
                          position=1) as rounds:
                    rows = execute(scenario, seed, progress=rounds, figures=figures)
                store.append(rows, replace=(scenario.hash, seed))
            bar.update(1)
    add_utility_drops(store)
    return store


def _clean_twins(runs: list[tuple[Scenario, int]], store: ResultStore) -> list[tuple[Scenario, int]]:
    """Attacker-free runs the poisoning runs need for ``poison.utility_drop`` and the grid lacks.

    A twin is any run that trains the same model without attackers (same ``training_key``), so a grid
    that already has the attacker-free cell, or a store that already ran it, costs nothing extra.
    """
    present = {(s.training_key, seed) for s, seed in runs}
    present |= {(r["extra"].get("training_key"), int(r["seed"])) for r in store.rows() if r.get("status") == "ok"}
    twins: dict[tuple[str, int], tuple[Scenario, int]] = {}
    for scenario, seed in runs:
        key = (scenario.clean_training_key, seed)
        if scenario.training_attacks and key not in present and key not in twins:
            twins[key] = (scenario.without_attacks(), seed)
    return list(twins.values())


def run_status(store: ResultStore) -> dict[str, Any]:
    counts: dict[str, int] = {}
    seen = set()
    for row in store.rows():
        key = (row["scenario_hash"], row["seed"])
        if key not in seen:
            seen.add(key)
            counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts
