"""A sweep killed at random points (SIGKILL or SIGINT) and resumed loses, duplicates and redoes nothing.

The child is a fake sweep: the loop of ``bench.engine.sweep.sweep`` (open the store as writer, skip what is
done, run, append with ``replace``, close) with synthetic rows instead of training, so that ten kills
take seconds. Before each run it logs the run's key (fsynced), so the harness knows every start.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench.store.results import ResultStore

ROOT = Path(__file__).resolve().parents[1]
RUNS, ROWS_PER_RUN, KILLS = 400, 12, 10

CHILD = """
import os, signal, sys, time
from bench.store.results import ResultStore, Row

# A shell that starts the test suite in the background leaves SIGINT ignored in every child, and Python keeps
# an inherited SIG_IGN: this sweep would then sleep through the SIGINT kills below. Take the default back.
signal.signal(signal.SIGINT, signal.default_int_handler)

out, starts, total, rows_per_run, cap = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
store = ResultStore(out, writer=True)
done = store.done()
started = 0
for i in range(total):
    key = (f"h{i:04d}", i % 3)
    if key in done:
        continue
    if cap and started >= cap:
        time.sleep(3600)  # wait to be killed: a parent descheduled under load must not find the sweep finished
    started += 1
    with open(starts, "a") as log:
        log.write(f"{key[0]} {key[1]}\\n")
        log.flush()
        os.fsync(log.fileno())
    time.sleep(0.001)  # the run's work
    rows = [Row(run_id=f"{key[0]}-{key[1]}", scenario="fake", scenario_hash=key[0], seed=key[1], tier="open-weight",
                model="m", task="t", method="lora", defenses="none", attack="none", metric=f"utility.m{j}",
                value=i + j / 100, extra={"pad": "x" * 200}) for j in range(rows_per_run)]
    store.append(rows, replace=key)
store.close()
"""


def _spawn(tmp_path: Path, cap: int = 0) -> subprocess.Popen:
    """The fake sweep; with ``cap``, it starts at most that many runs and then waits to be killed."""
    script = tmp_path / "fake_sweep.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), str(tmp_path / "starts.log"),
                             str(RUNS), str(ROWS_PER_RUN), str(cap)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _starts(tmp_path: Path) -> list[tuple[str, int]]:
    path = tmp_path / "starts.log"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [(h, int(s)) for h, s in (line.split() for line in lines if line.count(" ") == 1)]


def _records_per_run(path: Path) -> Counter:
    counts: Counter = Counter()
    for line in path.read_text().splitlines():
        counts.update((r["scenario_hash"], r["seed"]) for r in json.loads(line)["rows"][:1])
    return counts


def test_random_kills_lose_duplicate_and_redo_nothing(tmp_path):
    rng = random.Random(14)
    interrupted: Counter = Counter()  # runs a kill caught before they were stored: those may run again
    for _ in range(KILLS):
        before = len(_starts(tmp_path))
        step = rng.randint(1, 20)
        child = _spawn(tmp_path, cap=step + 3)  # the kill lands in the run cycle, never after the last run
        target, deadline = before + step, time.monotonic() + 120
        while len(_starts(tmp_path)) < target and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.003))  # a random point in the run / append / fsync cycle
        child.send_signal(rng.choice([signal.SIGKILL, signal.SIGINT]))
        _, err = child.communicate(timeout=60)
        assert child.returncode != 0, "the sweep finished before it was killed"
        assert b"JSONDecodeError" not in err
        last = _starts(tmp_path)[-1]
        if last not in ResultStore(tmp_path / "out").done():
            interrupted[last] += 1
    child = _spawn(tmp_path)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err.decode()

    store = ResultStore(tmp_path / "out")
    rows = store.rows()
    expected = {(f"h{i:04d}", i % 3) for i in range(RUNS)}
    lost = expected - store.done()
    duplicated = {key: n for key, n in _records_per_run(store.jsonl).items() if n > 1}
    starts = Counter(_starts(tmp_path))
    redone = {key: n - 1 - interrupted[key] for key, n in starts.items() if n - 1 > interrupted[key]}
    assert (len(lost), len(duplicated), len(redone)) == (0, 0, 0), (lost, duplicated, redone)
    assert len(rows) == RUNS * ROWS_PER_RUN
    assert sum(interrupted.values()) <= KILLS
    with store.csv.open() as handle:
        assert sum(1 for _ in handle) == 1 + len(rows), "the CSV is derived from the whole log at close"
    assert not list(store.directory.glob(".results.*-*")), "no temporaries left"
