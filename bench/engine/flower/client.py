"""The ClientApp: TierBench's local training and client-side defenses for one (round, client) job.

A client process builds the run once from the scenario and seed the server sends (``runner.plan`` and
``runner.prepare``, exactly as the in-process engine does, so data, initialisation and defenses agree
bit for bit), keeps it for later jobs, and answers each ``train`` message with the client's update.
"""

from __future__ import annotations

import hashlib
import pickle
from typing import TYPE_CHECKING

import torch

from bench.engine.flower import import_flwr, state, wire

if TYPE_CHECKING:  # the runner imports the engine; its run type is only named here
    from bench.engine.runner import Prepared

import_flwr()

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

app = ClientApp()

_built: dict[tuple[str, int], Prepared] = {}


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Every client this SuperNode hosts this round, one after another (in sampled order)."""
    job = msg.content[wire.JOB]
    p = prepared(bytes(job["scenario"]), int(job["seed"]))
    r = int(job["round"])
    updates, reply = {}, RecordDict()
    for client in [int(c) for c in job["clients"]]:
        update, result = run_job(p, r, client, msg.content[wire.GLOBAL])
        updates[str(client)] = wire.to_array(update)
        reply[f"{wire.RESULT}.{client}"] = result
    reply[wire.UPDATE] = ArrayRecord(updates)
    return Message(reply, reply_to=msg)


def run_job(p: Prepared, r: int, client: int, global_record: ArrayRecord) -> tuple[torch.Tensor, ConfigRecord]:
    """Train ``client`` for round ``r`` from the global state in ``global_record``: its update and result."""
    from bench.engine import federation as fl

    global_state = wire.flat_of(global_record, device=p.device).to(p.fed.method.get_flat().dtype)
    p.fed.method.on_round_start(r, p.scenario.federation.rounds)
    before = [state.snapshot(d) for d in p.fed.defenses]
    stats = fl.FederationStats()
    update = fl.train_client(p.fed, r, client, global_state, p.truth, stats)
    _refuse_uncarried(p)
    changed = [state.changes(d, b) for d, b in zip(p.fed.defenses, before)]
    batches = p.truth.client_batches.pop((r, client), None)
    return update, ConfigRecord({"client": client, "loss": stats.train_losses[-1], "batches": wire.dump_batches(batches),
                                 "defense_state": pickle.dumps(changed)})


def prepared(scenario_bytes: bytes, seed: int) -> Prepared:
    """The run as ``runner.prepare`` builds it, once per process (the latest run only: one at a time)."""
    key = (hashlib.sha256(scenario_bytes).hexdigest(), seed)
    if key not in _built:
        from bench.engine import runner

        scenario = pickle.loads(scenario_bytes)
        _built.clear()
        _built[key] = runner.prepare(scenario, seed, runner.plan(scenario))
    return _built[key]


def _refuse_uncarried(p: Prepared) -> None:
    for defense in p.fed.defenses:
        if defense.audit is not None:  # declared on Defense: client-side state no message carries back
            raise RuntimeError(f"{defense.name}: its client-side audit is not carried to the server under "
                               "federation.engine: flower; use the in-process engine")
    if p.transcript.provider_log or p.transcript.egress_records:
        raise RuntimeError(f"{p.scenario.method.name} records provider calls client-side, which the Flower "
                           "engine does not carry to the server; use the in-process engine")
