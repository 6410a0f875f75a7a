"""A warm start for the deployment's ClientApp processes: one process imports once, then forks one per task.

Flower 1.41's SuperExec runs every message to a SuperNode as a fresh ``flwr-clientapp`` process (one
task, then ``flwr_exit``), so each client and round paid a Python start and the imports of torch,
transformers, Flower and bench (about 12 s of the 17 s a deployed round cost). ``deployment`` starts one
``serve`` process per run, which imports all of that once and listens on a Unix socket, and puts a tiny
``flwr-clientapp`` first on the SuperNodes' PATH (``write_shim``): it sends its arguments to the server
and exits with the code of the forked child that ran Flower's own ``flwr-clientapp`` on them. The socket
is in Linux's abstract namespace (no file to remove, no path-length limit from a deep run folder), named
by ``$TIERBENCH_FLOWER_WARM_SOCKET``. ``$TIERBENCH_FLOWER_WARM=0`` turns this off (Flower's own processes).

Only modules are shared, never state: the child builds the run from the message exactly as a fresh
process does (``client.prepared``), and what a job changes travels in the messages
(``bench.engine.flower.state``), so results do not depend on this. The server forks before any
computation (torch's thread pool and CUDA start on first use, neither is fork-safe), and from one thread.

Building a run imports more than ``PRELOAD``: transformers loads a model's modelling code (and, through
it, torch's compiler stack), accelerate, safetensors, peft and the run's plugins on first use, about 1.9 s
of the 2 s a build took in every forked child (measured on the smoke cell, one thread). Given the run's
job file, ``serve`` first forks a *probe* that builds the run once and reports the modules the build
imported (``modules_a_build_imports``), then imports those by name itself: still modules only, the
computation stays in the probe, and each task's child rebuilds from the message in about 0.1 s.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
from collections.abc import Callable
from pathlib import Path

SOCKET_ENV = "TIERBENCH_FLOWER_WARM_SOCKET"
PRELOAD = ("torch", "transformers", "flwr.supernode.cli", "bench.engine.flower.client")
"""What a ClientApp process imports anyway (its app module, the Flower runtime, what training needs)."""

SHIM = """#!{python} -S
# flwr-clientapp for TierBench's deployment (bench/engine/flower/warm.py): run by a warm, forked process
import json, os, socket, sys, time
name, deadline = os.environ["{env}"], time.monotonic() + 300
while True:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect("\\0" + name)
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("no warm ClientApp server named " + name)
        time.sleep(0.2)
s.sendall(json.dumps(sys.argv[1:]).encode() + b"\\n")
code = s.makefile().readline().strip()
sys.exit(int(code) if code else 1)
"""


def write_shim(folder: Path) -> Path:
    """``folder/flwr-clientapp``, forwarding to the server named by ``$TIERBENCH_FLOWER_WARM_SOCKET``; put
    ``folder`` first on the SuperNodes' PATH (SuperExec starts ``flwr-clientapp`` by name)."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "flwr-clientapp"
    shim.write_text(SHIM.format(python=sys.executable, env=SOCKET_ENV))
    shim.chmod(0o755)
    return shim


def serve(name: str, main: Callable[[], object] | None = None, preload: tuple[str, ...] = PRELOAD,
          job: Path | None = None) -> None:
    """Import ``preload`` (and, given the run's ``job`` file, what building that run imports), then for each
    connection fork a child running ``main`` (Flower's ``flwr-clientapp`` entry point) with the arguments
    received, and answer its exit code. Runs until terminated."""
    import importlib

    for module in preload:
        importlib.import_module(module)
    if job is not None:
        import_quietly(modules_a_build_imports(job))
    if main is None:
        from flwr.supernode.cli import flwr_clientapp as main
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(f"\0{name}")  # abstract namespace; the shim retries until it listens
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    waiting: dict[int, socket.socket] = {}
    while True:
        for _ in selector.select(timeout=0.05):
            connection, _ = listener.accept()
            if not _same_user(connection):
                connection.close()  # an abstract socket has no file permissions: only our own user's shims run tasks
                continue
            argv = json.loads(connection.makefile().readline())
            child = os.fork()
            if child == 0:
                listener.close()
                connection.close()
                os._exit(_run(main, argv))
            waiting[child] = connection
        _answer_finished(waiting)


def modules_a_build_imports(job: Path) -> list[str]:
    """The modules, in import order, that building the run of ``job`` (the pickled scenario and seed that
    ``deployment`` writes) imports beyond what this process has: found by a forked probe that builds it
    (``runner.prepare``) and exits, so no computation happens here. Empty when the probe fails (the
    tasks then import on their own, and report the failure where it belongs)."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        os._exit(_probe(job, write))
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        names = json.loads(pipe.read() or b"[]")
    os.waitpid(child, 0)
    return names


def _probe(job: Path, out: int) -> int:
    names: list[str] = []
    try:
        import pickle

        from bench.engine import runner

        before = set(sys.modules)
        scenario, seed = pickle.loads(job.read_bytes())
        runner.prepare(scenario, seed, runner.plan(scenario))
        names = [m for m in sys.modules if m not in before]  # insertion order: an order that imports
    except BaseException:  # noqa: BLE001 - a probe's failure only costs the warm start
        import traceback

        traceback.print_exc()
    finally:
        with os.fdopen(out, "wb") as pipe:
            pipe.write(json.dumps(names).encode())
    return 0


def import_quietly(names: list[str]) -> None:
    """Import each of ``names``, skipping any that does not import on its own (it only costs its task the time)."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001,S112 - private or platform-specific modules may refuse
            continue


def _same_user(connection: socket.socket) -> bool:
    """Whether the peer runs as this process's user (``SO_PEERCRED``: pid, uid, gid)."""
    import struct

    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[1] == os.getuid()


def _run(main: Callable[[], object], argv: list[str]) -> int:
    sys.argv = ["flwr-clientapp", *argv]
    try:
        main()
    except SystemExit as stop:  # flwr_exit ends every task with sys.exit
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except BaseException:  # noqa: BLE001 - the child must not return into the server's loop
        import traceback

        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def _answer_finished(waiting: dict[int, socket.socket]) -> None:
    while waiting:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        connection = waiting.pop(pid, None)
        if connection is not None:
            with connection:
                connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())


if __name__ == "__main__":
    serve(sys.argv[1], job=Path(sys.argv[2]) if len(sys.argv) > 2 else None)
