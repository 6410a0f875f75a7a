"""TierBench's rounds on Flower's deployment engine: a SuperLink and SuperNodes as separate processes.

``federation.engine: flower-deployment``: ``runner.execute`` calls ``run_scenario``, so ``python -m bench run``
and every executor use it like any engine. ``run_scenario(scenario, seed, supernodes=2)`` starts, on
localhost and in insecure mode, one ``flower-superlink`` and ``supernodes`` ``flower-supernode`` processes (each a partition), submits the
app in ``app/`` with ``flwr run`` and waits for the rows. The app's ServerApp (``server_app`` here, run
by the SuperLink in its own process) reads the job (the pickled scenario and seed) from a file named
in the run config, runs ``runner.execute`` with the rounds sent through its Grid (``TierBenchStrategy``),
and writes the rows back as a pickle. ClientApps are ``bench.engine.flower.client.app``, run by the
SuperNodes (each message in a process forked from one warm server per run: ``warm``). Every process
finds ``bench`` on the PYTHONPATH (this checkout): nothing is installed.

``FLWR_HOME`` (the SuperLink's database, the FAB, the CLI's connection config) and Ray's temp dir are
under one folder per call (``simulation.flower_home``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bench.engine.flower import GRIDS, DeployedGrid, import_flwr, warm

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
        from bench.engine.flower.prompt_grid import PromptGrid

        GRIDS.append(DeployedGrid(PromptGrid(grid), int(context.run_config.get("supernodes", 1))))
        try:
            rows = runner.execute(scenario, seed)
        finally:
            GRIDS.pop()
        partial = job.with_suffix(".rows.tmp")
        partial.write_bytes(pickle.dumps(rows))
        partial.replace(job.with_suffix(".rows"))  # the driver waits for this name: written whole or not at all

    return app


server_app = _server_app()


DEFAULT_TIMEOUT_S = 1800.0
"""How long a deployed run may take, start to rows, unless ``$TIERBENCH_FLOWER_TIMEOUT`` (seconds) says otherwise:
past it the run is recorded failed and its processes stopped, never left hanging."""


def run_scenario(scenario: Scenario, seed: int, *, supernodes: int = 2, timeout: float | None = None) -> list[Row]:
    """The rows of one run whose rounds went through a local SuperLink and ``supernodes`` SuperNodes
    (fewer when the federation has fewer clients). Raises (RuntimeError, TimeoutError) when the SuperLink
    does not start, the submission fails, or the run ends or times out without rows: ``runner.execute``
    records that as a failed run with the reason."""
    from bench.engine.flower.simulation import flower_home

    timeout = timeout or float(os.environ.get("TIERBENCH_FLOWER_TIMEOUT", DEFAULT_TIMEOUT_S))
    supernodes = max(1, min(supernodes, scenario.federation.clients))
    deadline = time.monotonic() + timeout
    with flower_home(f"{scenario.hash}-{seed}") as home, local_federation(home, supernodes) as connection:
        job = home / "job.pkl"
        job.write_bytes(pickle.dumps((scenario, seed)))
        out, log = job.with_suffix(".rows"), home / "logs" / "run.log"
        out.unlink(missing_ok=True)  # a kept $TIERBENCH_FLOWER_HOME may hold an earlier run's rows
        submit = _start([str(BIN / "flwr"), "run", str(APP_DIR), connection, "--stream", "--run-config",
                         f'job="{job}" supernodes={supernodes}'], _env(home), log)  # --stream: exits when the run ends
        try:
            while not out.exists():
                if submit.poll() is not None and not _appears(out, wait_s=5.0):
                    raise RuntimeError(f"the deployed run ended without rows (flwr run exited {submit.returncode}): "
                                       f"{_tail(log)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no rows from the deployed run after {timeout:.0f} s: {_tail(log)}")
                time.sleep(0.5)
        finally:
            _stop(submit)
        return pickle.loads(out.read_bytes())


def _appears(path: Path, wait_s: float) -> bool:
    """Whether ``path`` exists within ``wait_s`` (the ServerApp writes its rows just before its run ends)."""
    deadline = time.monotonic() + wait_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return path.exists()


def _tail(log: Path, chars: int = 300) -> str:
    """The end of a log, colour codes removed: a failed run's reason (its folder may be gone by the time one reads it)."""
    with contextlib.suppress(OSError):
        text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))
        return " ".join(text.split())[-chars:] or "(empty log)"
    return "(no log)"


def _env(home: Path) -> dict[str, str]:
    path = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    binaries = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])  # the SuperLink and SuperNodes start Flower's
    return {**os.environ, "FLWR_HOME": str(home / "flwr"), "RAY_TMPDIR": str(home / "ray"), "PYTHONPATH": path,
            "PATH": binaries, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # executors (flower-superexec) by name
            # SuperExec polls for the next ClientApp task every 1 s by default (run_superexec.py); each
            # message to a SuperNode is one task, so every client round waited up to a second for nothing
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}


@contextlib.contextmanager
def local_federation(home: Path, supernodes: int) -> Iterator[str]:
    """A SuperLink and ``supernodes`` SuperNodes on localhost (insecure); yields the CLI's connection name."""
    link = _free_port()  # Flower 1.41 serves the Fleet, Control and ServerAppIo APIs over one HTTP port
    env, logs = _env(home), home / "logs"
    logs.mkdir(exist_ok=True)
    started: list[subprocess.Popen] = []
    try:
        node_env = env
        if os.environ.get("TIERBENCH_FLOWER_WARM", "1") != "0":  # ClientApp processes forked from one warm import
            # first: its imports overlap the SuperLink's start (the SuperNodes' first tasks wait for it to listen)
            node_env = _warm_clientapps(home, env)
            started.append(_start([sys.executable, "-m", "bench.engine.flower.warm", node_env[warm.SOCKET_ENV]],
                                  node_env, logs / "clientapps.log"))
        superlink = _start([str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                            "--host", "127.0.0.1", "--port", str(link), "--database", str(home / "flwr" / "state.db")],
                           env, logs / "superlink.log")
        started.append(superlink)
        _wait_for_port(link, superlink, logs / "superlink.log")
        for node in range(supernodes):
            started.append(_start([str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                                   "--host", "127.0.0.1", "--port", str(_free_port()),
                                   "--node-config", f"partition-id={node} num-partitions={supernodes}"],
                                  node_env, logs / f"supernode-{node}.log"))
        (home / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
        yield "local"
    finally:
        for process in reversed(started):  # only the processes this call started, by handle
            _stop(process)
        _stop_detached(home)


def _warm_clientapps(home: Path, env: dict[str, str]) -> dict[str, str]:
    """The SuperNodes' environment with ``warm``'s ``flwr-clientapp`` first on the PATH and its server's name
    (unique to this run: the abstract socket namespace is shared by the machine)."""
    shim = warm.write_shim(home / "bin")
    name = f"tierbench-flower-{os.getpid()}-{os.urandom(4).hex()}"
    return {**env, "PATH": os.pathsep.join([str(shim.parent), env["PATH"]]), warm.SOCKET_ENV: name}


def _stop_detached(home: Path) -> None:
    """Flower's executors and app processes that our SuperLink and SuperNodes started in sessions of their
    own (``flower-superexec``, ``flwr-clientapp``, the warm server's forked children): found by this run's private ``FLWR_HOME`` in their
    environment, so no other process is touched."""
    marker = f"FLWR_HOME={home / 'flwr'}".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if int(entry.name) != os.getpid() and marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), 15)


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=str(log.parent))


def _stop(process: subprocess.Popen) -> None:
    """Terminate one process this module started (by its handle), killing it if it outlives 20 s."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=20)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the SuperLink exited ({process.returncode}) before listening: {_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the SuperLink did not listen on {port} within {timeout:.0f} s: {_tail(log)}")
