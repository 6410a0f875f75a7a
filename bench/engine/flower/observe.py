"""TierBench's attacks on ANY Flower app's rounds: record the server's view, attack it after the run.

A Flower user keeps their app. Two changes measure its leakage:

1. wrap the ServerApp's strategy: ``RecordingStrategy(FedAvg(...))`` behaves as the wrapped strategy
   and keeps, per round, what the server broadcast and received (the ``Transcript`` TierBench's
   attacks read: ``global_before``, each client's update as received minus the broadcast, the
   aggregate applied, the clients' reported example counts);
2. optionally add ``client_mod`` to the ClientApp's mods, so that records name clients by their
   ``partition-id`` (the app's own numbering, which ground truth is written in) rather than Flower's
   random node ids.

After ``strategy.start(...)`` returns, ``attack_run(recording, app, attacks=[...], store=DIR)`` runs the
chosen server-vantage and external attacks (inversion, gradient and loss membership inference) on
that transcript, scores them with the ground truth the user supplies (``AppTruth``) and appends the
usual result rows to a TierBench store, where ``python -m bench report`` reads them.

The app's ArrayRecord is read as a flat state: its floating arrays, in the record's order; the ones
that are parameters of ``app.model`` (by name, as ``ArrayRecord(model.state_dict())`` names them) are
the trainable state the attacks see.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from bench.engine.flower import import_flwr

import_flwr()

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import Strategy  # noqa: E402

from bench.api.layout import ParameterLayout  # noqa: E402
from bench.api.registry import ATTACKS  # noqa: E402
from bench.api.seeding import generator  # noqa: E402
from bench.api.transcript import FederationSettings, GroundTruth, RoundRecord, ThreatView, Transcript  # noqa: E402
from bench.api.vocabulary import Record, RunStatus, Vantage  # noqa: E402
from bench.engine.views import seen_from  # noqa: E402
from bench.scoring.score import score  # noqa: E402
from bench.store.provenance import git_commit, package_versions  # noqa: E402
from bench.store.results import ResultStore, Row  # noqa: E402
from bench.world.tiers import OpenModel  # noqa: E402

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import PreTrainedTokenizerBase

    from bench.world.tasks import Task

RECORDED = (Vantage.SERVER, Vantage.AGGREGATE, Vantage.EXTERNAL)
"""The vantages a Flower server's recording can serve (it holds no participant's or provider's view)."""

CLIENT_RECORD = "tierbench"
"""The ConfigRecord ``client_mod`` adds to each reply: ``{"client": partition-id}``."""


def client_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """A ClientApp mod: tags each reply with the client's ``partition-id`` (else its node id)."""
    reply = call_next(msg, context)
    if not reply.has_error():
        client = context.node_config.get("partition-id", context.node_id)
        reply.content[CLIENT_RECORD] = ConfigRecord({"client": int(client)})
    return reply


def flatten(arrays: ArrayRecord) -> tuple[list[str], list[tuple[int, ...]], torch.Tensor]:
    """Names, shapes and the concatenation (float32) of the record's floating arrays, in the record's order."""
    names, shapes, parts = [], [], []
    for name, array in arrays.items():
        value = torch.from_numpy(array.numpy().copy())
        if not value.is_floating_point():
            continue
        names.append(name)
        shapes.append(tuple(value.shape))
        parts.append(value.reshape(-1).float())
    return names, shapes, torch.cat(parts) if parts else torch.zeros(0)


class RecordingStrategy(Strategy):
    """``strategy``, unchanged in what it sends and aggregates, plus the server's view in ``transcript``."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.transcript = Transcript()
        self.names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self.initial: torch.Tensor | None = None
        self.final: torch.Tensor | None = None
        self._open: RoundRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.names, self.shapes, broadcast = flatten(arrays)
        if self.initial is None:
            self.initial = broadcast
        self._open = RoundRecord(round=server_round - 1, sampled=[], global_before=broadcast)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        record = self._open
        for reply in replies:
            if reply.has_error() or not reply.content.array_records:
                continue
            client = _client_of(reply)
            received = flatten(next(iter(reply.content.array_records.values())))[2]
            record.transmitted[client] = received - record.global_before
            counts = [m["num-examples"] for m in reply.content.metric_records.values() if "num-examples" in m]
            if counts:
                record.weights[client] = float(counts[0])
        record.sampled = sorted(record.transmitted)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is not None:
            self.final = flatten(arrays)[2]
            record.aggregate = self.final - record.global_before
        self.transcript.rounds.append(record)
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()


def _client_of(reply: Message) -> int:
    if CLIENT_RECORD in reply.content.config_records:
        return int(reply.content.config_records[CLIENT_RECORD]["client"])
    return int(reply.metadata.src_node_id)


@dataclass
class AppTruth:
    """What only the experimenter knows, for scoring: never shown to an attack."""

    client_batches: dict[tuple[int, int], list[list[int]]] = field(default_factory=dict)
    """(round, client) -> the token ids that client trained on that round (for inversion)."""
    candidates: list[Record] = field(default_factory=list)
    """Records whose membership the attacks guess (for membership inference); ``member_flags`` says which trained."""
    member_flags: list[int] = field(default_factory=list)


@dataclass
class App:
    """The app's model as the attacker reconstructs it, and how to read its records."""

    name: str
    """A label for the rows (their ``scenario``)."""
    model: torch.nn.Module
    """The app's model; its parameters named as the ArrayRecord names them. Attacks load states into it."""
    tokenizer: PreTrainedTokenizerBase
    task: Task
    """A TierBench task (``bench.world.tasks``) whose ``example_losses`` and ``collate`` fit the model."""
    federation: FederationSettings
    """The public training settings attacks assume (lr, batch_size, local_steps, protocol): a ``bench.spec.scenario.Federation``."""


def attack_run(recording: RecordingStrategy, app: App, attacks: list[str], truth: AppTruth, *, seed: int = 0,
               store: str | None = None) -> list[Row]:
    """Run ``attacks`` (registry names, default configs) on what ``recording`` kept; their rows, appended to ``store``."""
    layout, select = _layout(recording, app.model)
    rounds = [_trainable(r, select) for r in recording.transcript.rounds]
    final_model, base_model = app.model, copy.deepcopy(app.model)
    final = OpenModel(final_model, layout, app.task, app.tokenizer)
    final.set_flat(recording.final[select])
    base = OpenModel(base_model, layout, app.task, app.tokenizer)
    base.set_flat(recording.initial[select])
    flags = torch.tensor(truth.member_flags) if truth.member_flags else None
    ground = GroundTruth(member_flags=flags, client_batches=dict(truth.client_batches))
    rows = []
    for name in attacks:
        cls = ATTACKS.get(name)
        attack = cls(cls.Config())
        if attack.vantage not in RECORDED:
            rows.append(_row(app, seed, name, "run", None, status=RunStatus.NOT_APPLICABLE,
                             error=f"{name} stands at the {attack.vantage} vantage; a Flower server records no more"))
            continue
        view = ThreatView(vantage=attack.vantage, rounds=[seen_from(r, attack.vantage) for r in rounds],
                          candidates=list(truth.candidates), layout=layout, final_model=final, base_model=base,
                          tokenizer=app.tokenizer, federation=app.federation)
        prediction = attack.run(view, generator("flower-app", seed, "attack", name))
        rows += [_row(app, seed, name, m.name, m.value, ci=(m.ci_low, m.ci_high), higher=m.higher_is_better,
                      extra=m.extra or {}) for m in score(prediction, ground)]
    if store is not None:
        with ResultStore(store, writer=True) as results:
            results.append(rows)
    return rows


def _layout(recording: RecordingStrategy, model: torch.nn.Module) -> tuple[ParameterLayout, torch.Tensor]:
    """The layout of the recorded arrays that are parameters of ``model``, and their positions in the flat record."""
    parameters = dict(model.named_parameters())
    names, shapes, positions, offset = [], [], [], 0
    for name, shape in zip(recording.names, recording.shapes):
        size = int(torch.Size(shape).numel())
        if name in parameters and tuple(parameters[name].shape) == shape:
            names.append(name)
            shapes.append(shape)
            positions.append(torch.arange(offset, offset + size))
        offset += size
    if not names:
        raise ValueError("no recorded array is a parameter of app.model (name the ArrayRecord as model.state_dict() does)")
    return ParameterLayout(tuple(names), tuple(shapes)), torch.cat(positions)


def _trainable(record: RoundRecord, select: torch.Tensor) -> RoundRecord:
    return RoundRecord(round=record.round, sampled=list(record.sampled), global_before=record.global_before[select],
                       transmitted={c: u[select] for c, u in record.transmitted.items()},
                       aggregate=None if record.aggregate is None else record.aggregate[select],
                       weights=dict(record.weights), sequences_per_example=record.sequences_per_example,
                       last_token_is_label=record.last_token_is_label)


def _row(app: App, seed: int, attack: str, metric: str, value: float | None, *, status: str = "ok", error: str = "",
         ci: tuple = (None, None), higher: bool | None = None, extra: dict | None = None) -> Row:
    label = hashlib.sha256(json.dumps(["flower-app", app.name]).encode()).hexdigest()[:16]
    return Row(run_id=f"{label}-{seed}", scenario=app.name, scenario_hash=label, seed=seed, tier="flower-app",
               model=type(app.model).__name__, task=getattr(app.task, "name", ""), method="flower-app", defenses="none",
               attack=attack, metric=metric, value=value, ci_low=ci[0], ci_high=ci[1], higher_is_better=higher,
               status=status, error=error, git_commit=git_commit(), packages=package_versions(),
               extra={"engine": "flower-app", **(extra or {})})
