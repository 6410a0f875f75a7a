"""The ClientApp: TierBench's local training and client-side defenses for one (round, client) job.

A client process builds the run once from the scenario and seed the server sends (``runner.plan`` and
``runner.prepare``, exactly as the in-process engine does, so data, initialisation and defenses agree
bit for bit), keeps it for later jobs, and answers each ``train`` message with the client's update.

What a job changes client-side beyond the update travels back in its result (``bench.engine.flower.state``):
the defenses' state (a DP ledger's new entries, a one-run audit such as dp-local's canaries, changed
scalars) and what the job added to the transcript's client-side part (a closed tier's provider log and
egress counters: the provider's endpoint is called from the client's job). The server's copy of each
defense's audit comes down with the message, so a job continues it even in a fresh process.
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
    for defense, down in zip(p.fed.defenses, pickle.loads(bytes(job["defense_state"]))):
        state.apply(defense, down)  # the server's audit: this process may not have run the client's last job
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
    mark = state.transcript_mark(p.transcript)
    stats = fl.FederationStats()
    update = fl.train_client(p.fed, r, client, global_state, p.truth, stats)
    changed = [state.changes(d, b) for d, b in zip(p.fed.defenses, before)]
    batches = p.truth.client_batches.pop((r, client), None)
    return update, ConfigRecord({"client": client, "loss": stats.train_losses[-1], "batches": wire.dump_batches(batches),
                                 "defense_state": pickle.dumps(changed),
                                 "transcript": pickle.dumps(state.transcript_changes(p.transcript, mark))})


def prepared(scenario_bytes: bytes, seed: int) -> Prepared:
    """The run as ``runner.prepare`` builds it, once per process (the latest run only: one at a time)."""
    key = (hashlib.sha256(scenario_bytes).hexdigest(), seed)
    if key not in _built:
        from bench.engine import runner

        scenario = pickle.loads(scenario_bytes)
        _built.clear()
        _built[key] = runner.prepare(scenario, seed, runner.plan(scenario))
    return _built[key]

