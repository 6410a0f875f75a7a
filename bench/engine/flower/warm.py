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

A task imports more than ``PRELOAD``: transformers loads a model's modelling code (and, through it,
torch's compiler stack), accelerate, safetensors, peft and the run's plugins on first use, about 1.9 s of
the 2 s each forked child spent building the run (measured on the smoke cell, one thread). So each child
reports, as it exits, the modules its task imported (through a pipe, at most ``REPORT_BYTES``), and the
server, once it has answered the shim, imports those by name itself (``import_quietly``): still modules
only, no state, no computation here. The first task of a run pays the imports as before; every later one
forks from a server that has them, and rebuilds the run from its message in 0.1 s (0.3-0.7 s under a
deployment's load).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import zlib
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


def serve(name: str, main: Callable[[], object] | None = None, preload: tuple[str, ...] = PRELOAD) -> None:
    """Import ``preload``, then for each connection fork a child running ``main`` (Flower's ``flwr-clientapp``
    entry point) with the arguments received, answer its exit code, and import what its task imported.
    Runs until terminated."""
    import importlib

    for module in preload:
        importlib.import_module(module)
    if main is None:
        from flwr.supernode.cli import flwr_clientapp as main
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(f"\0{name}")  # abstract namespace; the shim retries until it listens
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    waiting: dict[int, tuple[socket.socket, int]] = {}
    while True:
        for _ in selector.select(timeout=0.05):
            connection, _ = listener.accept()
            if not _same_user(connection):
                connection.close()  # an abstract socket has no file permissions: only our own user's shims run tasks
                continue
            argv = json.loads(connection.makefile().readline())
            report, into = os.pipe()
            child = os.fork()
            if child == 0:
                listener.close()
                connection.close()
                os.close(report)
                os._exit(_run(main, argv, into))
            os.close(into)
            waiting[child] = (connection, report)
        import_quietly(_answer_finished(waiting))


REPORT_BYTES = 60_000
"""The most a child writes of its report (compressed): less than a pipe holds (64 KiB on Linux), so a child
never blocks on its report while the server waits for it to exit; past it the list is cut to a prefix."""


def import_quietly(names: list[str]) -> None:
    """Import each of ``names`` not imported yet, skipping any that does not import on its own (it only costs
    a later task the time)."""
    import importlib

    for name in names:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except (Exception, SystemExit):  # noqa: BLE001,S112 - private or platform-specific modules may refuse
            continue


def _same_user(connection: socket.socket) -> bool:
    """Whether the peer runs as this process's user (``SO_PEERCRED``: pid, uid, gid)."""
    import struct

    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[1] == os.getuid()


def _run(main: Callable[[], object], argv: list[str], report: int) -> int:
    sys.argv = ["flwr-clientapp", *argv]
    before = set(sys.modules)
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
        _report(report, [m for m in sys.modules if m not in before])  # insertion order: an order that imports
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def _report(fd: int, names: list[str]) -> None:
    """Write ``names`` to the pipe ``fd``, compressed: a task that builds and trains a run imports about 2,000
    modules (64 KB as JSON, more than the pipe holds; about a sixth of that compressed)."""
    data = zlib.compress("\n".join(names).encode())
    while len(data) > REPORT_BYTES:
        names = names[: len(names) // 2]
        data = zlib.compress("\n".join(names).encode())
    with os.fdopen(fd, "wb") as pipe:
        pipe.write(data)


def _answer_finished(waiting: dict[int, tuple[socket.socket, int]]) -> list[str]:
    """Answer every shim whose child has exited; the modules those children imported."""
    imported: list[str] = []
    while waiting:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        connection, report = waiting.pop(pid, (None, -1))
        if connection is not None:
            with connection:
                connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
        if report >= 0:
            with os.fdopen(report, "rb") as pipe:
                imported += _names(pipe.read())
    return imported


def _names(data: bytes) -> list[str]:
    try:
        return [n for n in zlib.decompress(data).decode().split("\n") if n] if data else []
    except (zlib.error, UnicodeDecodeError):  # a child killed mid-report
        return []


if __name__ == "__main__":
    serve(sys.argv[1])
