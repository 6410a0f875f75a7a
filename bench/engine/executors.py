"""Executors: what spreads a sweep's runs over processes (DESIGN: serial by default, a local pool, Ray).

The driver (``bench.engine.sweep``) is the one writer: an executor runs ``run(scenario, seed, ...)`` for each
job wherever it likes and hands every job's rows back to the driver through ``done``, in the driver's
process, which appends them to the store. So resuming, ``--force`` and the lock stay the store's
business, whatever the executor.

- ``serial``: today's loop, in this process, with torch's default thread count.
- ``pool``: a local pool of single-threaded worker processes (``threads`` torch/OpenMP/MKL threads
  each, 1 by default). A run's arithmetic depends only on its thread count, never on which worker
  or how many workers ran it, so the rows equal a serial sweep's under ``OMP_NUM_THREADS=1``. A
  worker that dies (killed, out of memory) takes only its own run with it: that run is started again
  on a fresh worker, up to ``attempts`` times, then recorded ``failed`` with the reason. A driver that dies
  (``kill``, out of memory) takes its workers with it within about a second: each watches its driver's pid,
  because ``daemon`` workers are only stopped by a driver that exits normally, and an orphan would go on
  computing a run nobody records, on cores another sweep is measuring.
- ``ray`` (``bench.engine.executors_ray``): each run a Ray task, locally or on a cluster.
- ``auto``: ``pool`` with a worker per core when every run is a CPU run of a zoo model (tiny models:
  per-step overhead dominates, and two single-threaded processes do about 4x the work of one process
  with two threads), else ``serial``.
"""

from __future__ import annotations

import abc
import multiprocessing
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, ClassVar

from bench.api.config import doc
from bench.api.registry import Registry

if TYPE_CHECKING:  # named in annotations only
    from bench.spec.scenario import Scenario

EXECUTORS: Registry = Registry("executor")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
DEFAULT_ATTEMPTS = 3


@dataclass(frozen=True)
class Job:
    """One run to do: the ``index``-th of the sweep's plan."""

    index: int
    scenario: Scenario
    seed: int


RunFn = Callable[..., list]
"""``bench.engine.runner.execute``'s signature: ``(scenario, seed, *, progress=None, figures=None) -> rows``."""
Done = Callable[[Job, list], None]
"""Called in the driver with each finished job's rows (in the order jobs finish)."""
Started = Callable[[Job], None]
"""Called in the driver as a job starts, by executors that run one job at a time (serial)."""


def cores() -> int:
    """CPU cores this process may use (its affinity mask, not the machine's count)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def single_threaded(threads: int = 1) -> None:
    """Pin this process's math libraries to ``threads`` threads; call before heavy work starts."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set in this process (a reused worker): it holds the same value
        pass


def load_plugin_dirs(directories: tuple[str, ...]) -> None:
    """A worker loads the ``--plugins`` folders the driver loaded (the built-in components load on first use)."""
    from bench.api.registry import load_plugin_dir

    for directory in directories:
        load_plugin_dir(directory)


def failure_rows(job: Job, reason: str) -> list:
    """A job that failed outside ``execute`` (its worker kept dying): recorded ``failed`` as ``execute`` records any."""
    from bench.engine.runner import failed_rows

    return failed_rows(job.scenario, job.seed, reason)


def prepare_models(jobs: list[Job]) -> None:
    """Pretrain (or find cached) every zoo model the jobs use, here, once, before workers start: the
    workers then load cached weights instead of each pretraining its own copy (the weights do not depend
    on who builds them: ``ZooModel._pretrain`` runs single-threaded)."""
    from bench.api.registry import MODELS
    from bench.world.models import ZooModel

    sources = {}
    for job in jobs:
        model = job.scenario.model
        source = MODELS.get(model.name)
        if isinstance(source, type) and issubclass(source, ZooModel):
            sources[repr(model.config)] = source(model.config)
    for source in sources.values():
        source.path()


class Executor(abc.ABC):
    """Runs jobs and reports each job's rows to ``done`` in the driver process."""

    name: ClassVar[str]

    @dataclass(frozen=True, kw_only=True)
    class Config:
        pass

    def __init__(self, config: Config | None = None):
        self.config = config if config is not None else self.Config()

    @abc.abstractmethod
    def run(self, jobs: list[Job], run: RunFn, done: Done, *, figures: str | None = None,
            show_progress: bool = False, started: Started | None = None) -> None:
        """Run every job, reporting each job's rows to ``done`` in the driver process."""

    def describe(self) -> str:
        """What the progress line and the summary say about where runs went."""
        return self.name


@EXECUTORS.register("serial")
class SerialExecutor(Executor):
    """One run after another in this process (torch's default thread count)."""

    def run(self, jobs: list[Job], run: RunFn, done: Done, *, figures: str | None = None,
            show_progress: bool = False, started: Started | None = None) -> None:
        from tqdm import tqdm

        for job in jobs:
            if started is not None:
                started(job)
            with tqdm(total=job.scenario.federation.rounds, desc="rounds", leave=False, disable=not show_progress,
                      position=1) as rounds:
                rows = run(job.scenario, job.seed, progress=rounds, figures=figures)
            done(job, rows)


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    workers: int = doc("Worker processes (0: one per CPU core this process may use).", 0)
    threads: int = doc("torch / OpenMP / MKL threads in each worker.", 1)
    attempts: int = doc("Starts of a run before a worker that keeps dying makes it a failed run.", DEFAULT_ATTEMPTS)
    plugins: tuple[str, ...] = doc("Plugin folders (``--plugins``) each worker loads.", ())


@EXECUTORS.register("pool")
class PoolExecutor(Executor):
    """A local pool of single-threaded worker processes; a dead worker's run is retried on a fresh one."""

    Config = PoolConfig

    def workers(self, jobs: int) -> int:
        return max(1, min(self.config.workers or cores(), jobs))

    def describe(self) -> str:
        return f"pool of {self.config.workers or cores()} x {self.config.threads} thread"

    def run(self, jobs: list[Job], run: RunFn, done: Done, *, figures: str | None = None,
            show_progress: bool = False, started: Started | None = None) -> None:
        if not jobs:
            return
        prepare_models(jobs)
        _Pool(self.config, run, figures, self.workers(len(jobs))).drive(jobs, done)


class _Worker:
    """One worker process and the job it is running (None when idle)."""

    def __init__(self, context: multiprocessing.context.BaseContext, config: PoolConfig, run: RunFn):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_pool_worker, args=(child, config.threads, config.plugins, os.getpid()),
                                       daemon=True)
        self.process.start()
        child.close()
        self.conn.send(run)  # after the worker pinned its threads: unpickling ``run`` imports torch
        self.job: Job | None = None

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class _Pool:
    """The driver's side of the pool: hands jobs to idle workers and replaces dead ones."""

    def __init__(self, config: PoolConfig, run: RunFn, figures: str | None, size: int):
        self.config, self.run, self.figures, self.size = config, run, figures, size
        self.context = multiprocessing.get_context("spawn")  # no forked torch state, same start on every OS
        self.starts: dict[int, int] = {}

    def drive(self, jobs: list[Job], done: Done) -> None:
        pending = deque(jobs)
        workers = [_Worker(self.context, self.config, self.run) for _ in range(self.size)]
        try:
            while pending or any(w.job for w in workers):
                for index, worker in enumerate(workers):
                    if worker.job is None and pending:
                        if not worker.process.is_alive():  # died (its job, if any, is back in line): replace it
                            worker.stop()
                            worker = workers[index] = _Worker(self.context, self.config, self.run)
                        self._hand(worker, pending.popleft())
                busy = [w for w in workers if w.job is not None]
                wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                for worker in busy:
                    self._collect(worker, pending, done)
        finally:
            for worker in workers:
                worker.stop()

    def _hand(self, worker: _Worker, job: Job) -> None:
        self.starts[job.index] = self.starts.get(job.index, 0) + 1
        worker.job = job
        try:
            worker.conn.send((job.scenario, job.seed, self.figures))
        except OSError:  # it died just now: ``_collect`` sees a dead worker with a job and retries it
            pass

    def _collect(self, worker: _Worker, pending: deque, done: Done) -> None:
        """Hand a finished job's rows to ``done``; a dead worker's job goes back in line (or fails)."""
        job = worker.job
        assert job is not None
        if worker.conn.poll():
            try:
                rows = worker.conn.recv()
            except (EOFError, OSError):  # its end closed: the process is exiting; wait for its exit code
                rows = None
                worker.process.join(timeout=10)
            if rows is not None:
                worker.job = None
                done(job, rows)
                return
        if worker.process.is_alive():
            return
        code = worker.process.exitcode
        worker.stop()
        worker.job = None  # replaced by a fresh worker when there is a job for it
        if self.starts[job.index] >= self.config.attempts:
            done(job, failure_rows(job, f"its worker process died {self.starts[job.index]} times (last exit code {code})"))
        else:
            pending.appendleft(job)  # retried first, on a fresh worker


def _pool_worker(conn: Connection, threads: int, plugins: tuple[str, ...], driver: int) -> None:
    """A worker process: pin threads, receive the run function, then run jobs until told to stop."""
    exit_with_driver(driver)
    single_threaded(threads)
    from bench.engine.sweep import quiet_libraries

    quiet_libraries()
    load_plugin_dirs(plugins)
    try:
        run = conn.recv()
        while (message := conn.recv()) is not None:
            scenario, seed, figures = message
            conn.send(_guarded_run(run, scenario, seed, figures))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):  # Ctrl-C reaches the whole group; the driver says so
        sys.exit(1)


def exit_with_driver(driver: int, every_s: float = 1.0) -> None:
    """End this process once ``driver`` is no longer its parent (the driver died and it was reparented).

    A thread polls ``os.getppid()``, which changes when POSIX reparents an orphan (Windows does not: there an
    orphan runs on until its next send fails, as before). The driver's pid comes as an argument rather than from
    ``getppid()`` at start, so a driver that died before this worker started is noticed too."""

    def watch() -> None:
        while os.getppid() == driver:
            time.sleep(every_s)
        os._exit(1)  # mid-run: nothing of this process is worth keeping, and nothing would read it

    threading.Thread(target=watch, name="exit-with-driver", daemon=True).start()


def _guarded_run(run: RunFn, scenario: Scenario, seed: int, figures: str | None) -> list:
    """``execute`` records its own failures; anything that still escapes fails this run, not the worker."""
    try:
        return run(scenario, seed, figures=figures)
    except Exception as error:  # noqa: BLE001 - a failing run is recorded and the sweep goes on
        return failure_rows(Job(-1, scenario, seed), f"{type(error).__name__}: {error}")


@dataclass(frozen=True, kw_only=True)
class AutoConfig:
    workers: int = doc("Worker processes when the pool is chosen (0: one per core).", 0)
    plugins: tuple[str, ...] = doc("Plugin folders (``--plugins``) each worker loads.", ())


@EXECUTORS.register("auto")
class AutoExecutor(Executor):
    """``pool`` (one single-threaded worker per core) for CPU runs of zoo models, else ``serial``."""

    Config = AutoConfig

    def choose(self, jobs: list[Job]) -> Executor:
        if cores() > 1 and jobs and all(tiny_cpu_run(job.scenario) for job in jobs):
            return PoolExecutor(PoolConfig(workers=self.config.workers, plugins=self.config.plugins))
        return SerialExecutor()

    def run(self, jobs: list[Job], run: RunFn, done: Done, *, figures: str | None = None,
            show_progress: bool = False, started: Started | None = None) -> None:
        self.choose(jobs).run(jobs, run, done, figures=figures, show_progress=show_progress, started=started)


def tiny_cpu_run(scenario: Scenario) -> bool:
    """A run that ``auto`` spreads over single-threaded workers: a zoo model, trained on the CPU."""
    from bench.api.registry import MODELS
    from bench.world.models import ZooModel

    source = MODELS.get(scenario.model.name)
    on_cpu = scenario.device == "cpu" or (scenario.device == "auto" and not _cuda())
    return on_cpu and isinstance(source, type) and issubclass(source, ZooModel)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def executor_class(name: str) -> type[Executor]:
    """The executor registered as ``name`` (``ray`` registers on import of its module)."""
    import bench.engine.executors_ray  # noqa: F401  (registers "ray"; imports ray itself only when a sweep uses it)

    return EXECUTORS.get(name, key="--executor")


def names() -> list[str]:
    import bench.engine.executors_ray  # noqa: F401

    return EXECUTORS.names()
