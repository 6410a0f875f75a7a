"""Bar-style check of the performance goals in a pytest-benchmark JSON file.

    OMP_NUM_THREADS=1 .venv/bin/pytest -m perf tests/benchmarks/test_bench_engine.py \\
        tests/benchmarks/test_bench_batched.py --benchmark-only --benchmark-json=perf.json
    .venv/bin/python -m bench.tools.check_perf perf.json

Figures (each a ratio of mean seconds; the benchmarks record them in ``extra_info``, and where one
is missing it is computed here from the two benchmarks' means):
- ``engine/central``: the round loop over a central loop of the same steps (goal at most 1.10);
- ``batched/sequential <method>``: a round with the clients trained together over one after
  another (goal at most 0.35 on 2 CPU cores); ``dp-lora`` is LoRA under dp-local (DP-SGD's clients
  together, ``bench.client.private_group``, against Opacus one client at a time).

Prints one line per figure and exits 1 when any misses its goal, 2 when the file holds none of them
(or cannot be read), else 0. It times nothing itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.api.vocabulary import JsonObject

ENGINE_GOAL = 1.10
BATCHED_GOAL = 0.35
BAR_WIDTH = 30


@dataclass(frozen=True)
class Figure:
    label: str
    ratio: float
    goal: float

    @property
    def ok(self) -> bool:
        return self.ratio <= self.goal

    def line(self) -> str:
        scale = max(self.goal * 2, self.ratio)  # the goal sits mid-bar unless the ratio runs past it
        filled = round(BAR_WIDTH * self.ratio / scale)
        mark = round(BAR_WIDTH * self.goal / scale)
        bar = "".join("#" if i < filled else ("|" if i == mark else ".") for i in range(BAR_WIDTH))
        return f"{self.label:<26} {self.ratio:6.3f}  [{bar}]  goal <= {self.goal:.2f}  {'ok' if self.ok else 'MISSED'}"


def figures(report: JsonObject, engine_goal: float = ENGINE_GOAL, batched_goal: float = BATCHED_GOAL) -> list[Figure]:
    """The goal ratios found in a pytest-benchmark report."""
    benches = {b.get("name", ""): b for b in report.get("benchmarks", [])}
    found = []
    engine = _ratio(benches, "test_central_loop_same_steps", "engine_over_central", "test_federated_engine", inverse=True)
    if engine is not None:
        found.append(Figure("engine/central", engine, engine_goal))
    for method in ("lora", "fft", "rlhf", "dp-lora"):
        batched = _ratio(benches, f"test_round_time[{method}-batched]", "batched_over_sequential",
                         f"test_round_time[{method}-sequential]")
        if batched is not None:
            found.append(Figure(f"batched/sequential {method}", batched, batched_goal))
    return found


def _ratio(benches: JsonObject, name: str, key: str, other: str, inverse: bool = False) -> float | None:
    """``extra_info[key]`` of benchmark ``name``, else its mean over ``other``'s (``other``'s over its, inverse)."""
    bench = benches.get(name)
    if bench is None:
        return None
    recorded = (bench.get("extra_info") or {}).get(key)
    if isinstance(recorded, (int, float)):
        return float(recorded)
    mine, theirs = _mean(bench), _mean(benches.get(other))
    if not mine or not theirs:
        return None
    return theirs / mine if inverse else mine / theirs


def _mean(bench: JsonObject | None) -> float | None:
    mean = ((bench or {}).get("stats") or {}).get("mean")
    return float(mean) if isinstance(mean, (int, float)) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.check_perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--engine-goal", type=float, default=ENGINE_GOAL, help="most engine/central ratio allowed")
    parser.add_argument("--batched-goal", type=float, default=BATCHED_GOAL, help="most batched/sequential ratio allowed")
    args = parser.parse_args(argv)
    try:
        report = json.loads(Path(args.json).read_text())
    except (OSError, ValueError) as error:
        print(f"check_perf: cannot read {args.json}: {error}", file=sys.stderr)
        return 2
    found = figures(report, args.engine_goal, args.batched_goal)
    if not found:
        print(f"check_perf: {args.json} holds no engine-vs-central or batched-vs-sequential benchmark", file=sys.stderr)
        return 2
    machine = report.get("machine_info", {})
    print(f"{args.json}: {machine.get('node', '?')}, {machine.get('cpu', {}).get('count', '?')} CPUs")
    for figure in found:
        print(figure.line())
    return 0 if all(f.ok for f in found) else 1


if __name__ == "__main__":
    sys.exit(main())
