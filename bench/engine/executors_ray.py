"""The Ray executor: each run a Ray task with declared resources, on a local Ray instance or a cluster.

``python -m bench run FILES --executor ray [--address ADDR] [--workers N]``. Without ``--address`` a
local Ray instance starts (``N`` CPUs, default one per core) and stops when the sweep ends; with it,
an existing cluster is used (``N`` then caps the runs in flight). Ray ships with the ``fl`` extra
(``pip install -e '.[fl]'``, part of ``.[dev]``).

Resources per task: ``threads`` CPUs (1: the worker runs single-threaded, as the pool's do), and a
GPU fraction where the run trains on a GPU (``gpu_fraction``). A worker that dies is Ray's to retry
(``max_retries``: ``attempts - 1``); a run whose every attempt died is recorded ``failed`` with the
reason. The driver alone writes the store, as with every executor.

Ray's temporary files (sockets, logs, spilled objects) go under ``RAY_TMPDIR`` when set, else under
TierBench's cache (``$TIERBENCH_CACHE/ray``, default ``~/.cache/tierbench/ray``), never ``/tmp/ray``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from bench.api.config import doc
from bench.api.errors import UserError
from bench.engine.executors import (
    DEFAULT_ATTEMPTS,
    EXECUTORS,
    THREAD_VARIABLES,
    Done,
    Executor,
    Job,
    RunFn,
    Started,
    cores,
    failure_rows,
    load_plugin_dirs,
    prepare_models,
    single_threaded,
)

if TYPE_CHECKING:  # Ray is optional and imports when a sweep uses it
    from ray import ObjectRef

    from bench.spec.scenario import Component, Scenario
    from bench.store.results import Row

MEMORY_FACTOR = 4.0
"""GPU bytes a run needs per byte of base weights: weights, gradients and two Adam moments of a full
fine-tuning (an over-estimate for LoRA and the other methods that train a small share)."""
ACTIVATION_GB = 1.0
"""Added to every run's estimate: activations, the CUDA context, the allocator's slack."""
MAX_RUNS_PER_GPU = 8
"""However small the model, at most this many runs share one GPU (their kernels queue on it)."""


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    address: str = doc("An existing Ray cluster's address ('auto', 'HOST:PORT', 'ray://HOST:PORT'); empty: start "
                       "a local Ray instance for this sweep.", "")
    workers: int = doc("Local instance: its CPUs (0: one per core). Cluster: the most runs in flight (0: no cap).", 0)
    threads: int = doc("CPUs each run declares, and its torch / OpenMP / MKL threads.", 1)
    attempts: int = doc("Starts of a run (Ray retries a task whose worker died) before it is recorded failed.",
                        DEFAULT_ATTEMPTS)
    gpu_memory_gb: float = doc("Memory of one GPU, for the GPU fraction a run declares (0: read it from this "
                               "machine's first GPU; unknown: a whole GPU per run).", 0.0)
    temp_dir: str = doc("Ray's temporary folder for a local instance (empty: $RAY_TMPDIR, else "
                        "$TIERBENCH_CACHE/ray).", "")
    plugins: tuple[str, ...] = doc("Plugin folders (``--plugins``) each worker loads.", ())


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Each run a Ray task (CPUs, a GPU fraction); a local Ray instance, or a cluster by ``--address``."""

    Config = RayConfig

    def describe(self) -> str:
        where = self.config.address or "local instance"
        return f"ray ({where}, {self.config.threads} thread per run)"

    def run(self, jobs: list[Job], run: RunFn, done: Done, *, figures: str | None = None,
            show_progress: bool = False, started: Started | None = None) -> None:
        if not jobs:
            return
        ray = import_ray()
        prepare_models(jobs)
        started = self._start(ray)
        try:
            self._drive(ray, jobs, run, done, figures)
        finally:
            if started:
                ray.shutdown()

    def _start(self, ray: ModuleType) -> bool:
        """Connect to the cluster, or start a local instance; True when this sweep started it."""
        if ray.is_initialized():
            return False
        options: dict[str, object] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                                       runtime_env={"env_vars": worker_environment(self.config.threads)})
        if self.config.address:
            ray.init(address=self.config.address, **options)
            return True
        temp = temp_dir(self.config.temp_dir)
        os.environ["RAY_TMPDIR"] = str(temp)  # anything Ray starts later looks here too
        ray.init(num_cpus=(self.config.workers or cores()) * self.config.threads, _temp_dir=str(temp),
                 object_store_memory=256 * 2**20, **options)
        return True

    def _drive(self, ray: ModuleType, jobs: list[Job], run: RunFn, done: Done, figures: str | None) -> None:
        task = ray.remote(_ray_task)
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        memory = self.config.gpu_memory_gb or local_gpu_memory_gb()
        window = (self.config.workers or len(jobs)) if self.config.address else len(jobs)
        pending, flight = list(reversed(jobs)), {}
        while pending or flight:
            while pending and len(flight) < window:
                job = pending.pop()
                options = dict(num_cpus=self.config.threads, num_gpus=gpu_fraction(job.scenario, memory, gpus),
                               max_retries=self.config.attempts - 1, retry_exceptions=False)
                ref = task.options(**options).remote(run, job.scenario, job.seed, figures, self.config.threads,
                                                     self.config.plugins)
                flight[ref] = job
            (ready,), _ = ray.wait(list(flight), num_returns=1)
            job = flight.pop(ready)
            done(job, self._rows(ray, ready, job))

    def _rows(self, ray: ModuleType, ref: ObjectRef, job: Job) -> list[Row]:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as error:  # the task raised (execute records its own failures)
            return failure_rows(job, f"its Ray task raised {type(error.cause).__name__}: {error.cause}")
        except ray.exceptions.RayError as error:  # the worker (or its node) died on every attempt
            return failure_rows(job, f"its Ray worker died {self.config.attempts} times ({type(error).__name__})")


def _ray_task(run: RunFn, scenario: Scenario, seed: int, figures: str | None, threads: int,
              plugins: tuple[str, ...]) -> list:
    """What a Ray worker does for one run (workers are reused: setup is idempotent)."""
    single_threaded(threads)
    from bench.engine.sweep import quiet_libraries

    quiet_libraries()
    load_plugin_dirs(plugins)
    return run(scenario, seed, figures=figures)


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise UserError("the ray executor needs Ray: pip install -e '.[fl]' (Ray comes with flwr[simulation])",
                        key="--executor") from None
    return ray


def temp_dir(configured: str = "") -> Path:
    """Where a local Ray instance keeps its files: never a shared system location."""
    from bench.api.memo import cache_root

    folder = Path(configured or os.environ.get("RAY_TMPDIR") or cache_root() / "ray").expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def worker_environment(threads: int) -> dict[str, str]:
    """Environment of the Ray workers: this checkout importable, the same cache, ``threads`` threads."""
    from bench.api.memo import cache_root

    path = [str(Path(__file__).resolve().parents[1])] + [p for p in sys.path if p and os.path.isdir(p)]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(path)), "TIERBENCH_CACHE": str(cache_root()),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    return env | {name: str(threads) for name in THREAD_VARIABLES}


def local_gpu_memory_gb() -> float:
    """Memory of this machine's first GPU, 0 when there is none."""
    import torch

    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.get_device_properties(0).total_memory / 1e9


def gpu_fraction(scenario: Scenario, gpu_memory_gb: float, cluster_has_gpus: bool) -> float:
    """The share of one GPU a run declares: 0 on the CPU; else 1/k, where k runs of the model fit in the
    GPU's memory by ``run_memory_gb`` (1 <= k <= ``MAX_RUNS_PER_GPU``); a whole GPU when either is unknown."""
    wants_gpu = scenario.device.startswith("cuda") or (scenario.device == "auto" and cluster_has_gpus)
    if not wants_gpu:
        return 0.0
    need = run_memory_gb(scenario.model)
    if not need or gpu_memory_gb <= 0:
        return 1.0
    share = max(1, min(MAX_RUNS_PER_GPU, math.floor(gpu_memory_gb / need)))
    return math.floor(1e4 / share) / 1e4  # Ray counts GPU fractions in 1e-4 units


def run_memory_gb(model: Component) -> float | None:
    """GPU memory one run of ``model`` (a scenario's model component) needs, by ``MEMORY_FACTOR``;
    None when its size cannot be read offline."""
    parameters = parameter_count(model)
    if parameters is None:
        return None
    dtype = getattr(model.config, "dtype", "float32")
    width = 2 if dtype in ("bfloat16", "float16") else 4
    return parameters * width * MEMORY_FACTOR / 1e9 + ACTIVATION_GB


def parameter_count(model: Component) -> int | None:
    """About how many parameters a decoder has, from its architecture (no weights loaded)."""
    from bench.api.registry import MODELS

    try:
        architecture = MODELS.get(model.name)(model.config).architecture()
    except (UserError, OSError, ValueError):
        architecture = None
    sizes = architecture if architecture is not None else model.config
    hidden = getattr(sizes, "hidden_size", None) or getattr(sizes, "hidden", None)
    layers = getattr(sizes, "num_hidden_layers", None) or getattr(sizes, "layers", None)
    vocab = getattr(sizes, "vocab_size", None) or getattr(sizes, "vocab", None)
    if not (isinstance(hidden, int) and isinstance(layers, int) and isinstance(vocab, int)):
        return None
    inner = getattr(sizes, "intermediate_size", None) or 4 * hidden
    embeddings = vocab * hidden * (1 if getattr(sizes, "tie_word_embeddings", False) else 2)
    return embeddings + layers * (4 * hidden * hidden + 3 * hidden * inner)
