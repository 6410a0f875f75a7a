"""TierBench's rounds on Flower's deployment engine: a SuperLink and SuperNodes as separate processes.

``run_scenario(scenario, seed, supernodes=2)`` starts, on localhost and in insecure mode, one
``flower-superlink`` and ``supernodes`` ``flower-supernode`` processes (each a partition), submits the
app in ``app/`` with ``flwr run`` and waits for the rows. The app's ServerApp (``server_app`` here, run
by the SuperLink in its own process) reads the job (the pickled scenario and seed) from a file named
in the run config, runs ``runner.execute`` with the rounds sent through its Grid (``TierBenchStrategy``),
and writes the rows back as a pickle. ClientApps are ``bench.engine.flower.client.app``, run by the
SuperNodes. Every process finds ``bench`` on the PYTHONPATH (this checkout): nothing is installed.

``FLWR_HOME`` (the SuperLink's database, the FAB, the CLI's connection config) and Ray's temp dir are
under one folder per call (``simulation.flower_home``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bench.engine.flower import GRIDS, DeployedGrid, import_flwr

if TYPE_CHECKING:  # Flower and the runner load on first use
    from flwr.app import Context
    from flwr.serverapp import ServerApp

    from bench.spec.scenario import Scenario
    from bench.store.results import Row

APP_DIR = Path(__file__).parent / "app"
REPO_ROOT = Path(__file__).absolute().parents[3]
BIN = Path(sys.executable).parent

def _server_app() -> ServerApp:
    import_flwr()
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from bench.engine import runner

        job = Path(str(context.run_config["job"]))
        scenario, seed = pickle.loads(job.read_bytes())
        GRIDS.append(DeployedGrid(grid, int(context.run_config.get("supernodes", 1))))
        try:
            rows = runner.execute(scenario, seed)
        finally:
            GRIDS.pop()
        partial = job.with_suffix(".rows.tmp")
        partial.write_bytes(pickle.dumps(rows))
        partial.replace(job.with_suffix(".rows"))  # the driver waits for this name: written whole or not at all

    return app


server_app = _server_app()


def run_scenario(scenario: Scenario, seed: int, *, supernodes: int = 2, timeout: float = 1800.0) -> list[Row]:
    """The rows of one run whose rounds went through a local SuperLink and ``supernodes`` SuperNodes."""
    from bench.engine.flower.simulation import flower_home

    with flower_home() as home, local_federation(home, supernodes) as connection:
        job = home / "job.pkl"
        job.write_bytes(pickle.dumps((scenario, seed)))
        out = job.with_suffix(".rows")
        submit = subprocess.run([str(BIN / "flwr"), "run", str(APP_DIR), connection, "--run-config",
                                 f'job="{job}" supernodes={supernodes}'],
                                env=_env(home), capture_output=True, text=True, timeout=300)
        if submit.returncode != 0:
            raise RuntimeError(f"flwr run failed: {submit.stdout[-2000:]} {submit.stderr[-2000:]}")
        deadline = time.monotonic() + timeout
        while not out.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no rows after {timeout:.0f} s; logs under {home}")
            time.sleep(0.5)
        return pickle.loads(out.read_bytes())


def _env(home: Path) -> dict[str, str]:
    path = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    binaries = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])  # the SuperLink and SuperNodes start Flower's
    return {**os.environ, "FLWR_HOME": str(home / "flwr"), "RAY_TMPDIR": str(home / "ray"), "PYTHONPATH": path,
            "PATH": binaries, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}  # executors (flower-superexec) by name


@contextlib.contextmanager
def local_federation(home: Path, supernodes: int) -> Iterator[str]:
    """A SuperLink and ``supernodes`` SuperNodes on localhost (insecure); yields the CLI's connection name."""
    link = _free_port()  # Flower 1.41 serves the Fleet, Control and ServerAppIo APIs over one HTTP port
    env, logs = _env(home), home / "logs"
    logs.mkdir(exist_ok=True)
    started: list[subprocess.Popen] = []
    try:
        started.append(_start([str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                               "--host", "127.0.0.1", "--port", str(link), "--database", str(home / "flwr" / "state.db")],
                              env, logs / "superlink.log"))
        _wait_for_port(link, started[0])
        for node in range(supernodes):
            started.append(_start([str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                                   "--host", "127.0.0.1", "--port", str(_free_port()),
                                   "--node-config", f"partition-id={node} num-partitions={supernodes}"],
                                  env, logs / f"supernode-{node}.log"))
        (home / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
        yield "local"
    finally:
        for process in reversed(started):  # only the processes this call started, by handle
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        _stop_detached(home)


def _stop_detached(home: Path) -> None:
    """Flower's executors and app processes that our SuperLink and SuperNodes started in sessions of their
    own (``flower-superexec``, ``flwr-clientapp``): found by this run's private ``FLWR_HOME`` in their
    environment, so no other process is touched."""
    marker = f"FLWR_HOME={home / 'flwr'}".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if int(entry.name) != os.getpid() and marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), 15)


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=str(log.parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the SuperLink exited ({process.returncode}) before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the SuperLink did not listen on {port} within {timeout:.0f} s")
