"""Our SecAgg+ beside Flower 1.41's SecAgg+, on the same updates (pytest-benchmark; ``-m perf``).

Target (issue 7): secure aggregation adds at most 10% to a round with 10 clients and LoRA-sized
updates. One run measures, per update size (100k and 134k float32 values, 10 clients, weights 10..19):

- ours: a plain round (``Transport``: weighted mean) and a SecAgg+ round (``SecAggTransport``: every
  party's cryptography, in one process, one thread, no serialisation), as in ``test_bench_transport``;
- Flower: a plain FedAvg fit round (``default_fit_workflow``) and a SecAgg+ fit round
  (``SecAggPlusWorkflow`` on the server, ``secaggplus_mod`` on the clients), run two ways:
  ``simulation``, Flower's own engine (``run_simulation``, Ray backend, 2 CPUs, one per client actor),
  started once in a background thread whose ServerApp runs the rounds the benchmarks ask for (so
  pytest-benchmark times each round whole, and not Ray's start); and ``in-process``, the same workflow
  and mod code over a grid that hands each message to its client in this thread. The engine polls for
  messages every 0.1 s on both sides, so each of SecAgg+'s three extra message stages costs up to
  0.2 s of waiting; the in-process run shows the protocol's own cost without that latency.

The secure round's ``extra_info`` carries ``added_s``: its median minus the plain round's median from
the same implementation, i.e. the protocol's added seconds per round. The two are not measured the same
way, and the figures must be read with that in mind: ours and Flower in-process are the protocol's
whole compute done sequentially (Flower's also deep-copies each message, standing for its delivery);
Flower in simulation also pays the engine's latency for its extra stages, but runs two clients at once.

Comparable parameters: each client has 8 neighbours (our ``default_degree(10)``), i.e. Flower's
``num_shares = 9`` (Flower counts the client's own share); 5 shares reconstruct a secret (ours:
``threshold = 0.5`` of the 9-member share group; Flower: ``reconstruction_threshold = 5``); coordinates
are clipped to [-1, 1]; masks live in Z_(2^32) (ours ``bits = 32``; Flower ``modulus_range = 2^32`` with
its default ``quantization_range = 2^22`` per client, and ``max_weight = 19``, the largest weight).
Known differences: Flower expands masks with NumPy's Mersenne Twister seeded by a 32-bit fold of the
key (ours: ChaCha20); Flower uploads int64 masked vectors (ours: packed 32-bit words). No client drops.

Needs the ``fl`` extra (``pip install -e .[fl]``); skipped without it. Flower and Ray write under
temporary folders (``FLWR_HOME``, ``RAY_TMPDIR``), never under ``~/.flwr``.
"""

from __future__ import annotations

import copy
import logging
import queue
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.api.defense import Transport
from defenses.masking.graph import default_degree
from defenses.masking.protocol import share_threshold
from defenses.secagg import SecureAggregation

pytestmark = pytest.mark.perf

INSTALL_HINT = "Flower's simulation engine is not installed (pip install -e '.[fl]')"
flwr = pytest.importorskip("flwr", reason=INSTALL_HINT)
ray = pytest.importorskip("ray", reason=INSTALL_HINT)

from flwr.client import NumPyClient  # noqa: E402  (only once Flower is known to be there)

CLIENTS = 10
LENGTHS = {"100k": 100_000, "134k": 134_000}
WEIGHTS = {c: float(10 + c) for c in range(CLIENTS)}
NEIGHBOURS = default_degree(CLIENTS)
SHARES = NEIGHBOURS + 1
RECONSTRUCTION = share_threshold(SHARES, 0.5)
CLIP, BITS, FLOWER_QUANTISATION = 1.0, 32, 2**22
ROUNDS_OURS, ROUNDS_FLOWER = 10, 8
ROUND_TIMEOUT_S = 120.0
SIZES = pytest.mark.parametrize("length", list(LENGTHS.values()), ids=list(LENGTHS))


def make_updates(length: int) -> dict[int, torch.Tensor]:
    rng = torch.Generator().manual_seed(length)
    return {c: torch.randn(length, generator=rng) * 1e-3 for c in range(CLIENTS)}


UPDATES = {length: make_updates(length) for length in LENGTHS.values()}
UPDATES_NP = {length: {c: u.numpy() for c, u in ups.items()} for length, ups in UPDATES.items()}
PLAIN_MEDIAN_S: dict[tuple[str, int], float] = {}
"""Plain-round medians, filled by the plain benchmarks so the secure ones can subtract them."""


def weighted_mean(length: int) -> np.ndarray:
    total = sum(WEIGHTS.values())
    return sum(UPDATES_NP[length][c].astype(np.float64) * (WEIGHTS[c] / total) for c in range(CLIENTS))


def median_s(benchmark) -> float | None:
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    return stats.stats.median if stats is not None else None


def record_added(benchmark, implementation: str, length: int) -> None:
    """Store (and print, for ``-s``) the secure round's median minus the plain round's."""
    secure, plain = median_s(benchmark), PLAIN_MEDIAN_S.get((implementation, length))
    if secure is None or plain is None:
        return
    benchmark.extra_info.update(plain_median_s=plain, added_s=secure - plain)
    print(
        f"\n[{implementation} secagg+ {length} floats] round {secure:.3f} s, plain {plain:.3f} s, "
        f"added {secure - plain:.3f} s per round"
    )


# ---- ours -------------------------------------------------------------------------------------------


def our_round(carrier: Transport, length: int, round_index: int) -> torch.Tensor:
    """Encode every client's update and aggregate: the transport's whole share of a round."""
    updates = UPDATES[length]
    messages = carrier.encode(round_index, updates, WEIGHTS, torch.Generator().manual_seed(round_index))
    return carrier.aggregate(round_index, messages, WEIGHTS)


@SIZES
def test_bench_ours_plain_round(benchmark, length):
    aggregate = benchmark(our_round, Transport(), length, 0)
    np.testing.assert_allclose(aggregate.numpy(), weighted_mean(length), atol=1e-7)
    PLAIN_MEDIAN_S[("ours", length)] = median_s(benchmark)


@SIZES
def test_bench_ours_secaggplus_round(benchmark, length):
    config = SecureAggregation.Config(variant="secagg+", neighbours=NEIGHBOURS, threshold=0.5, bits=BITS, clip=CLIP)
    defense = SecureAggregation(config)
    rounds = iter(range(10**6))
    aggregate = benchmark.pedantic(
        lambda: our_round(defense.transport(), length, next(rounds)), rounds=ROUNDS_OURS, iterations=1
    )
    np.testing.assert_allclose(aggregate.numpy(), weighted_mean(length), atol=1e-6)
    protocol = defense.transport().ledger
    assert protocol.rounds and protocol.rounds[-1]["dropout_tolerance"] == 1 - RECONSTRUCTION / SHARES
    benchmark.extra_info.update(defense.costs())
    record_added(benchmark, "ours", length)


# ---- Flower -----------------------------------------------------------------------------------------


class FlowerUpdateClient(NumPyClient):
    """Returns its fixed update for the size of the model it is sent (no training)."""

    def __init__(self, partition: int):
        self.partition = partition

    def fit(self, parameters, config):
        return [UPDATES_NP[parameters[0].size][self.partition]], int(WEIGHTS[self.partition]), {}


def secaggplus_when_asked(msg, context, call_next):
    """Flower's ``secaggplus_mod`` on SecAgg+ messages only, so plain rounds share the same engine."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def flower_client_app():
    from flwr.clientapp import ClientApp

    def client_fn(context):
        return FlowerUpdateClient(int(context.node_config["partition-id"])).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_when_asked])


def content_bytes(obj: Any) -> int:
    """Serialised size of a Flower record tree: every object's deflated body, children included.
    Deflating caches views inside the objects (they can no longer be deep-copied), so measure a copy."""
    return _deflated_bytes(copy.deepcopy(obj))


def _deflated_bytes(obj: Any) -> int:
    children = getattr(obj, "children", None) or {}
    return len(obj.deflate()) + sum(_deflated_bytes(child) for child in children.values())


class ByteCountingGrid:
    """Wraps the engine's grid and adds up the serialised content of what goes down and comes up."""

    def __init__(self, grid):
        self.grid, self.down, self.up = grid, 0, 0

    def send_and_receive(self, messages, *args, **kwargs):
        messages = list(messages)
        self.down += sum(content_bytes(m.content) for m in messages)
        replies = list(self.grid.send_and_receive(messages, *args, **kwargs))
        self.up += sum(content_bytes(m.content) for m in replies if m.has_content())
        return replies

    def __getattr__(self, name):
        return getattr(self.grid, name)


class FlowerEngine:
    """Flower's simulation engine in a background thread; its ServerApp runs the rounds asked of it.

    ``run_round`` hands (kind, length) to the ServerApp thread and waits for the aggregate, so a round is
    timed from the caller's side, whole. ``kind`` is ``plain`` or ``secagg+``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.requests: queue.Queue = queue.Queue()
        self.replies: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run_simulation, name="flower-simulation", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def run_round(self, kind: str, length: int, count_bytes: bool = False) -> Any:
        self.requests.put((kind, length, count_bytes))
        while True:
            try:
                reply = self.replies.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError("Flower's simulation engine stopped") from self.error
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def stop(self) -> None:
        self.requests.put(None)
        self.thread.join(timeout=ROUND_TIMEOUT_S)

    def _run_simulation(self) -> None:
        from flwr.simulation import run_simulation

        backend = {
            "init_args": {"num_cpus": 2, "include_dashboard": False},
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        }
        try:
            run_simulation(self._server_app(), flower_client_app(), num_supernodes=CLIENTS, backend_config=backend)
        except BaseException as error:  # surfaced by run_round
            self.error = error
            self.replies.put(error)

    def _server_app(self):
        from flwr.server import ServerApp

        app = ServerApp()

        @app.main()
        def main(grid, context):
            self._serve(grid, context)

        return app

    def _serve(self, grid, context) -> None:
        """Set up a legacy FedAvg context once, then run each requested fit round until told to stop."""
        from flwr.server.compat.app_utils import start_update_client_manager_thread

        legacy = _legacy_context(context)
        registration, stop_registration, registered = start_update_client_manager_thread(grid, legacy.client_manager)
        registered.wait()
        try:
            while (request := self.requests.get()) is not None:
                try:
                    self.replies.put(_flower_round(grid, legacy, *request))
                except Exception as error:  # the benchmark thread re-raises it
                    self.replies.put(error)
        finally:
            stop_registration.set()
            registration.join()


def _legacy_context(context):
    from flwr.app import ConfigRecord
    from flwr.server import ServerConfig
    from flwr.server.compat import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key

    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=CLIENTS,
        min_available_clients=CLIENTS,
        accept_failures=False,
    )
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=1), strategy=strategy)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.START_TIME: 0.0, Key.CURRENT_ROUND: 0})
    return legacy


def _flower_workflow(kind: str) -> Callable:
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.default_workflows import default_fit_workflow

    if kind == "plain":
        return default_fit_workflow
    return SecAggPlusWorkflow(
        num_shares=SHARES,
        reconstruction_threshold=RECONSTRUCTION,
        clipping_range=CLIP,
        quantization_range=FLOWER_QUANTISATION,
        modulus_range=2**BITS,
        max_weight=max(WEIGHTS.values()),
    )


def _flower_round(grid, legacy, kind: str, length: int, count_bytes: bool) -> Any:
    """One fit round from a zero model of ``length`` values: the aggregate, or the bytes it moved."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    config = legacy.state.config_records[MAIN_CONFIGS_RECORD]
    config[Key.CURRENT_ROUND] = int(config[Key.CURRENT_ROUND]) + 1
    zeros = ndarrays_to_parameters([np.zeros(length, np.float32)])
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(zeros, True)
    carrier = ByteCountingGrid(grid) if count_bytes else grid
    _flower_workflow(kind)(carrier, legacy)
    if count_bytes:
        return {"bytes_up": carrier.up / CLIENTS, "bytes_down": carrier.down / CLIENTS}
    aggregate = legacy.state.array_records[MAIN_PARAMS_RECORD]
    return parameters_to_ndarrays(compat.arrayrecord_to_parameters(aggregate, True))[0]


class InProcessGrid:
    """Hands each message straight to its node's ClientApp, in this thread: Flower's own workflow and mod
    code without the engine. A deep copy of each message stands for its delivery (Flower's stages
    share one content object between recipients, and the mod consumes what it reads)."""

    def __init__(self, client_app):
        from flwr.app import Context, RecordDict

        self.client_app = client_app
        self.contexts = {
            node: Context(
                run_id=0, node_id=node, node_config={"partition-id": partition}, state=RecordDict(), run_config={}
            )
            for partition, node in enumerate(range(1001, 1001 + CLIENTS))
        }

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        return [self.client_app(copy.deepcopy(m), self.contexts[m.metadata.dst_node_id]) for m in messages]


class FlowerInProcess:
    """Flower's workflows over an ``InProcessGrid``: its protocol's own cost, without engine latency."""

    def __init__(self):
        from flwr.app import Context, RecordDict
        from flwr.server.compat.grid_client_proxy import GridClientProxy

        self.grid = InProcessGrid(flower_client_app())
        self.legacy = _legacy_context(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))
        for node in self.grid.get_node_ids():
            assert self.legacy.client_manager.register(GridClientProxy(node_id=node, grid=self.grid, run_id=0))

    def run_round(self, kind: str, length: int, count_bytes: bool = False) -> Any:
        return _flower_round(self.grid, self.legacy, kind, length, count_bytes)


@contextmanager
def quiet_flower_log() -> Iterator[None]:
    flower_log = logging.getLogger("flwr")
    level = flower_log.level
    flower_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        flower_log.setLevel(level)


@contextmanager
def in_process_identity() -> Iterator[None]:
    """Flower's messages take their run and sender from the process's task identity, which its engine
    sets; without an engine the benchmark sets it (run 0, the server's node) and restores it after."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 0, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@contextmanager
def simulated_flower() -> Iterator[FlowerEngine]:
    """Flower's engine, with its homes in short temporary folders (Ray's socket paths must stay under
    108 characters) and its telemetry off; warmed by one round per size (Ray starts its actors)."""
    workdir = Path(tempfile.mkdtemp(prefix="tb-flwr-"))
    (workdir / "ray").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLWR_HOME", str(workdir / "home"))
        patch.setenv("RAY_TMPDIR", str(workdir / "ray"))
        patch.setenv("FLWR_TELEMETRY_ENABLED", "0")
        patch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        # Ray's workers must unpickle this module's client code without importing the test module.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        engine = FlowerEngine(workdir)
        engine.start()
        try:
            for length in LENGTHS.values():
                engine.run_round("plain", length)
            yield engine
        finally:
            engine.stop()
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module", params=["in-process", "simulation"])
def flower(request):
    """Flower run one way for all its tests (module scope: the simulation's threads and Ray actors do not
    run beside the in-process measurements). ``.name`` says which."""
    with quiet_flower_log():
        if request.param == "in-process":
            with in_process_identity():
                runner = FlowerInProcess()
                runner.name = "flower in-process"
                yield runner
            return
        with simulated_flower() as runner:
            runner.name = "flower simulation"
            yield runner


@SIZES
def test_bench_flower_plain_round(benchmark, flower, length):
    aggregate = benchmark.pedantic(
        flower.run_round, args=("plain", length), rounds=ROUNDS_FLOWER, iterations=1, warmup_rounds=1
    )
    np.testing.assert_allclose(aggregate, weighted_mean(length), atol=1e-7)
    benchmark.extra_info.update(flower.run_round("plain", length, count_bytes=True))
    PLAIN_MEDIAN_S[(flower.name, length)] = median_s(benchmark)


@SIZES
def test_bench_flower_secaggplus_round(benchmark, flower, length):
    aggregate = benchmark.pedantic(
        flower.run_round, args=("secagg+", length), rounds=ROUNDS_FLOWER, iterations=1, warmup_rounds=1
    )
    # Flower quantises each weighted value to 2^22 levels of [-1, 1]: a few 1e-7 of error per client.
    np.testing.assert_allclose(aggregate, weighted_mean(length), atol=1e-5)
    secure = flower.run_round("secagg+", length, count_bytes=True)
    plain = flower.run_round("plain", length, count_bytes=True)
    benchmark.extra_info.update(secure, expansion_up=secure["bytes_up"] / plain["bytes_up"])
    record_added(benchmark, flower.name, length)
