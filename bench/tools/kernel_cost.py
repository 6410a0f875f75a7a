"""What does pinning the AVX2 kernel path cost? (The README's "One CPU kernel path" timing.)

    python -m bench.tools.kernel_cost FILE [--paths avx2 avx512] [--repeats 2]

Runs FILE's grid serially, one thread, once per path and repeat, alternating paths so that load drifts
evenly, each in a fresh process with ``ATEN_CPU_CAPABILITY`` set (MKL and oneDNN left to follow it) and its own
cache folder under a temporary directory (the zoo models are pretrained once per path, before timing), and
prints each run's ``wall_s`` per path. Time it on a quiet machine; a path the processor lacks is an error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _run(path: str, scenario: str, out: Path, cache: Path) -> list[float]:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": path, "TIERBENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "bench", "run", scenario, "--out", str(out), "--executor", "serial",
                    "--quiet", "--force"], env=env, check=True, stdout=subprocess.DEVNULL)
    walls: dict[str, float] = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        for row in json.loads(line).get("rows", []):
            walls[row["run_id"]] = row["wall_s"]
    return list(walls.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--paths", nargs="+", default=["avx2", "avx512"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        _time(args.file, args.paths, args.repeats)
    except subprocess.CalledProcessError as error:  # bench run said why on stderr (a bad file, a path this CPU lacks)
        print(f"error: `bench run {args.file}` exited {error.returncode}", file=sys.stderr)
        return 2
    return 0


def _time(scenario: str, paths: list[str], repeats: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for path in paths:  # warm-up: pretrain the zoo models on each path, untimed
            _run(path, scenario, root / f"warm-{path}", root / f"cache-{path}")
        print("| path | repeat | wall_s per run |\n|---|---|---|")
        for repeat in range(repeats):
            for path in paths:
                walls = _run(path, scenario, root / f"{path}-{repeat}", root / f"cache-{path}")
                print(f"| {path} | {repeat} | {', '.join(f'{w:.1f}' for w in walls)} |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
