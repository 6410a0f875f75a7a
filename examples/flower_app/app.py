"""A small Flower app, measured by TierBench without rewriting it.

The app is ordinary Flower 1.41 (Message API): a ClientApp that takes one full-batch SGD step on its
partition with its own loop, a ServerApp running FedAvg. (Its model, tokenizer and data come from
TierBench's zoo and synthetic task only to keep the example small and offline; any torch model works.)

What TierBench adds is three lines, marked ``# TierBench``: ``client_mod`` on the ClientApp (records
name clients by partition), ``RecordingStrategy`` around FedAvg (the server's view, kept), and
``attack_run`` after the rounds (attacks on that view, result rows in a store).

Run it with Flower's simulation engine::

    TIERBENCH_STORE=results/flower-app python -c "from examples.flower_app.app import simulate; simulate()"

or drive ``server_app`` and ``client_app`` with ``flwr run`` like any Flower app.
"""

from __future__ import annotations

import os

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from bench.api.seeding import generator
from bench.engine.flower.observe import App, AppTruth, RecordingStrategy, attack_run, client_mod  # TierBench
from bench.spec.scenario import Federation
from bench.world.models import MODELS
from bench.world.tasks import TASKS

NUM_CLIENTS, ROUNDS, LR, RECORDS = 2, 2, 0.1, 8
"""Clients, rounds, the SGD step size, records per client (half train: members; half do not)."""
ATTACKS = ["inversion-tokens", "mia-loss"]


def world() -> tuple:
    """The app's task, model, tokenizer and per-client records (members, non-members)."""
    task_cls = TASKS.get("synthetic-clinical")
    task = task_cls(task_cls.Config(num_classes=3, max_length=32))
    data = task.load(NUM_CLIENTS * RECORDS, generator("flower-app", "data"))
    source = MODELS.get("tiny-gpt2")
    model, tokenizer = source(source.Config()).load(task.kind, task.num_labels, torch.device("cpu"), 0)
    half = RECORDS // 2
    parts = [data.pool[c * RECORDS:(c + 1) * RECORDS] for c in range(NUM_CLIENTS)]
    return task, model, tokenizer, [(p[:half], p[half:]) for p in parts]


TASK, MODEL, TOKENIZER, PARTITIONS = world()

client_app = ClientApp(mods=[client_mod])  # TierBench: replies name their partition


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    members, _ = PARTITIONS[int(context.node_config["partition-id"])]
    MODEL.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    MODEL.train()
    batch = TASK.collate(members, TOKENIZER, torch.device("cpu"))
    loss = TASK.example_losses(MODEL, batch).mean()
    MODEL.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in MODEL.parameters():
            if p.grad is not None:
                p -= LR * p.grad
    reply = RecordDict({"arrays": ArrayRecord(MODEL.state_dict()),
                        "metrics": MetricRecord({"num-examples": len(members), "train_loss": float(loss.detach())})})
    return Message(reply, reply_to=msg)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    run(grid, store=str(context.run_config.get("store", "")) or os.environ.get("TIERBENCH_STORE") or None)


def run(grid: Grid, store: str | None = None) -> list:
    """The rounds (FedAvg, recorded), then TierBench's attacks on the server's view; the result rows."""
    initial = ArrayRecord(MODEL.state_dict())
    strategy = RecordingStrategy(FedAvg(fraction_evaluate=0.0, min_train_nodes=NUM_CLIENTS,  # TierBench: wrap
                                        min_available_nodes=NUM_CLIENTS))
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=ROUNDS)
    settings = Federation(clients=NUM_CLIENTS, clients_per_round=NUM_CLIENTS, rounds=ROUNDS, local_steps=1,
                          batch_size=RECORDS // 2, lr=LR, optimizer="sgd", protocol="fedsgd")
    app = App(name="flower-app-example", model=MODEL, tokenizer=TOKENIZER, task=TASK, federation=settings)
    return attack_run(strategy, app, ATTACKS, truth(), store=store)  # TierBench: attack, store the rows


def truth() -> AppTruth:
    """What the experimenter knows: each client's trained tokens per round, and who is a member."""
    batches = {}
    for c, (members, _) in enumerate(PARTITIONS):
        batch = TASK.collate(members, TOKENIZER, torch.device("cpu"))
        tokens = [row[m.bool()].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"])]
        batches.update({(r, c): tokens for r in range(ROUNDS)})
    members = [e for m, _ in PARTITIONS for e in m]
    nonmembers = [e for _, n in PARTITIONS for e in n]
    return AppTruth(client_batches=batches, candidates=members + nonmembers,
                    member_flags=[1] * len(members) + [0] * len(nonmembers))


def simulate() -> None:
    """The app on Flower's simulation engine (Ray), Flower's and Ray's files in a private folder (``flower_home``)."""
    from flwr.simulation import run_simulation

    from bench.engine.flower.simulation import flower_home

    with flower_home() as folder:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=NUM_CLIENTS,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": NUM_CLIENTS, "num_gpus": 0,
                                                     "_temp_dir": str(folder / "ray"), "include_dashboard": False}})
