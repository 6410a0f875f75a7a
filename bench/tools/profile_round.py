"""Where a run's wall time goes, phase by phase: one scenario at one seed, in this process, under cProfile.

    OMP_NUM_THREADS=1 python -m bench.tools.profile_round results/studies/round-cost/round1.yaml \\
        --json round1.json

Prints one line per phase (seconds, share of the run's wall time) and the run's ``cost.*`` rows; with
``--json`` also writes them. The phases are functions' cumulative times, so nested phases are shown
under their parent and the parent's time includes theirs:

- ``prepare``: data, the model load, the method's setup (``bench.engine.runner.prepare``);
- ``base perplexity``: the untrained model loaded again and scored (``bench.scoring.base_perplexity``);
- ``evaluation``: utility before and after training (``bench.scoring.utility.evaluate``);
- ``rounds``: the round loop (``bench.engine.federation.run``), and under it: ``local training``
  (the optimizer steps: ``bench.client.batched.train_group`` and ``bench.client.training.train_local``),
  ``model loads`` (``Method.set_flat``), ``update checks`` (``check_finite``), ``client updates``
  (``transmitted_update``), ``server`` (``finish_round``: attacks on updates, defenses, transport,
  aggregation, the next global state) and, under it, ``aggregation``;
- ``attacks``: every attack's ``run`` (its model loads and generation included);
- ``model metadata``: what every run's row says about the weights (``ModelSource.metadata``).

cProfile adds a little to every Python call, so the figures are a breakdown, not a timing; on a shared
machine give proportions. It times nothing for a test and asserts nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

from bench.api.vocabulary import JsonObject

PHASES: list[tuple[str, int, tuple[tuple[str, str], ...]]] = [
    # (label, depth, ((file suffix, function name), ...)): cumulative times of the functions, summed
    ("prepare", 0, (("bench/engine/runner.py", "prepare"),)),
    ("base perplexity", 0, (("bench/scoring/base_perplexity.py", "measure"),)),
    ("evaluation", 0, (("bench/scoring/utility.py", "evaluate"),)),
    ("rounds", 0, (("bench/engine/federation.py", "run"),)),
    ("local training", 1, (("bench/client/batched.py", "train_group"), ("bench/client/training.py", "_train_local"))),
    ("model loads", 1, (("bench/api/method.py", "set_flat"),)),
    ("update checks", 1, (("bench/engine/federation.py", "check_finite"),)),
    ("client updates", 1, (("bench/engine/federation.py", "transmitted_update"),)),
    ("server", 1, (("bench/engine/federation.py", "finish_round"),)),
    ("aggregation", 2, (("bench/engine/federation.py", "_aggregate"),)),
    ("attacks", 0, (("attacks/", "run"),)),
    ("model metadata", 0, (("bench/world/", "metadata"),)),
]


def profile_run(path: str, seed: int) -> JsonObject:
    """The phases and cost rows of ``path``'s first scenario at ``seed``, run here under cProfile."""
    from bench.engine.runner import execute
    from bench.spec.scenario import load

    scenario = load(path)[0]
    profiler = cProfile.Profile()
    started = time.perf_counter()
    rows = profiler.runcall(execute, scenario, seed)
    wall = time.perf_counter() - started
    failed = [r.error for r in rows if r.status != "ok" and r.attack == "none"]
    if failed:
        raise SystemExit(f"the run failed: {failed[0]}")
    stats = pstats.Stats(profiler)
    phases = {label: round(cumulative(stats, functions), 3) for label, _, functions in PHASES}
    costs = {r.metric: r.value for r in rows if r.metric.startswith("cost.")}
    return {"scenario": scenario.name, "seed": seed, "wall_s": round(wall, 3), "phases": phases, "costs": costs,
            "metrics": {f"{r.attack}/{r.metric}": r.value for r in rows if not r.metric.startswith("cost.")}}


def cumulative(stats: pstats.Stats, functions: tuple[tuple[str, str], ...]) -> float:
    """Summed cumulative seconds of the profiled functions named ``name`` in a file whose path holds
    ``where`` (a recursive call counts once: cProfile's cumulative time already does)."""
    total = 0.0
    for (file, _, name), (_, _, _, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if any(name == wanted and where in file.replace("\\", "/") for where, wanted in functions):
            total += cumtime
    return total


def render(result: JsonObject) -> str:
    wall = float(result["wall_s"])
    lines = [f"{result['scenario']} seed {result['seed']}: {wall:.1f} s wall (under cProfile)", "",
             "| phase | seconds | share of wall |", "| --- | ---: | ---: |"]
    phases = result["phases"]
    assert isinstance(phases, dict)
    for label, depth, _ in PHASES:
        seconds = float(phases[label])
        lines.append(f"| {'&nbsp;&nbsp;' * 2 * depth}{label} | {seconds:.1f} | {seconds / wall:.0%} |")
    costs = result["costs"]
    assert isinstance(costs, dict)
    lines += ["", "cost rows (per round where the name says so): "
              + ", ".join(f"{k} {float(v):.4g}" for k, v in costs.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.profile_round", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", help="scenario file (its first scenario runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the phases, cost rows and metrics here")
    args = parser.parse_args(argv)
    result = profile_run(args.scenario, args.seed)
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
