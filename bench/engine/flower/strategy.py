"""The server side of TierBench's rounds as a Flower Strategy.

``configure_train`` samples the round's clients with TierBench's seeded sampler
(``federation.begin_round``) and sends each its job; ``aggregate_train`` hands the replies to
``federation.finish_round``: participant attacks, client-update defenses, the transport (what the
server receives, kept in the transcript the attacks read), the aggregation rule and the server-side
defenses. Flower's ``Strategy.start`` drives the rounds; there is no second loop here.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from bench.api.transcript import RoundRecord
from bench.engine import federation as fl
from bench.engine.flower import import_flwr, state, wire

import_flwr()

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import Strategy  # noqa: E402

if TYPE_CHECKING:  # the runner imports the engine; its run type is only named here
    from bench.engine.runner import Prepared


class TierBenchStrategy(Strategy):
    """TierBench's server over a prepared run (``runner.prepare``); ``transcript`` and ``truth`` fill as in-process."""

    def __init__(self, p: Prepared, *, min_nodes: int = 1, wait_s: float = 600.0) -> None:
        """``min_nodes``: SuperNodes to wait for before the first round (Flower registers them while the
        ServerApp starts); ``wait_s``: how long to wait for them."""
        self.p = p
        self.min_nodes, self.wait_s = min_nodes, wait_s
        self.fed = p.fed
        self.transport = fl.transport_of(p.fed.defenses)
        self.stats = fl.FederationStats()
        self.global_state = p.fed.method.get_flat()
        self.scenario_bytes = pickle.dumps(p.scenario)
        self._pending: tuple[int, RoundRecord, torch.Generator, float] | None = None

    def initial_arrays(self) -> ArrayRecord:
        return wire.flat_record(self.global_state)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        r = server_round - 1  # Flower counts from 1, TierBench's seeds and records from 0
        sampled, record, rng = fl.begin_round(self.fed, r, self.global_state)
        nodes = connected_nodes(grid, self.min_nodes, self.wait_s)
        self._pending = (r, record, rng, time.perf_counter())
        # One message per SuperNode and round (a SuperNode serves one message at a time), carrying every
        # client it hosts this round; which node hosts which client changes no result.
        hosted: dict[int, list[int]] = {}
        for c in sampled:
            hosted.setdefault(nodes[c % len(nodes)], []).append(c)
        return [Message(RecordDict({wire.GLOBAL: arrays, wire.JOB: self._job(r, clients)}), dst_node_id=node,
                        message_type=MessageType.TRAIN) for node, clients in hosted.items()]

    def _job(self, r: int, clients: list[int]) -> ConfigRecord:
        down = pickle.dumps([state.downlink(d) for d in self.fed.defenses])  # e.g. an audit the client continues
        return ConfigRecord({"round": r, "clients": clients, "seed": self.p.seed, "scenario": self.scenario_bytes,
                             "defense_state": down})

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        r, record, rng, started = self._pending
        received = self._received(r, list(replies))
        updates = {}
        for c in record.sampled:  # sampled order, as the in-process loop: losses, ledgers, provider log, then the server side
            if c not in received:
                raise RuntimeError(f"round {r}: no reply from client {c}")
            update, result = received[c]
            updates[c] = update.to(self.p.device)
            self.stats.train_losses.append(float(result["loss"]))
            batches = wire.load_batches(str(result["batches"]))
            if batches is not None and "client_batches" in self.fed.keep:
                self.p.truth.client_batches[(r, c)] = batches
            for defense, changed in zip(self.fed.defenses, pickle.loads(bytes(result["defense_state"]))):
                state.apply(defense, changed)
            state.extend_transcript(self.p.transcript, pickle.loads(bytes(result["transcript"])))
        self.global_state = fl.finish_round(self.fed, r, record, rng, updates, self.global_state, self.transport,
                                            self.p.transcript, self.stats, started)
        for observe in self.fed.observers:
            observe(r, self.global_state)
        if self.fed.progress is not None:
            self.fed.progress.update(1)
        return wire.flat_record(self.global_state), None

    @staticmethod
    def _received(r: int, replies: list[Message]) -> dict[int, tuple[torch.Tensor, ConfigRecord]]:
        received = {}
        for reply in replies:
            if reply.has_error():
                raise RuntimeError(f"round {r}: a Flower client failed: {reply.error.reason}")
            updates = reply.content[wire.UPDATE]
            for key, result in reply.content.config_records.items():
                if key.startswith(wire.RESULT):
                    client = int(result["client"])
                    received[client] = (wire.flat_of(updates, str(client)), result)
        return received

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return []  # utility is measured on the final model after the rounds, as in-process

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        pass

    def finish(self) -> fl.FederationStats:
        """After the last round: the method holds the final global state (as ``federation.run`` leaves it)."""
        self.fed.method.set_flat(self.global_state)
        return self.stats


def connected_nodes(grid: Grid, at_least: int, wait_s: float) -> list[int]:
    """The connected SuperNodes, once ``at_least`` are (which node serves which client changes no result)."""
    deadline = time.monotonic() + wait_s
    while len(nodes := sorted(grid.get_node_ids())) < at_least:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(nodes)} of {at_least} Flower SuperNodes connected after {wait_s:.0f} s")
        time.sleep(0.2)
    return nodes
