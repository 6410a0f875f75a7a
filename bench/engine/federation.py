"""The federated round loop: the one place where rounds happen.

Attacks and defenses never copy this loop; they are hooks (``bench.api.defense.Defense``,
``bench.api.attack.Attack`` participant hooks), called in this order each round:

  [Attack.tamper_broadcast] (a malicious server's broadcast state)
  -> sample clients -> per client: [Defense.wrap_training] local training -> flat update
  -> [Attack.poison_updates] (malicious clients) -> [Defense.on_client_update]
  -> transport.encode (what the server sees; kept in the transcript for the vantages)
  -> [Defense.aggregate] or transport.aggregate -> [Defense.on_aggregate]
  -> global += server_lr * aggregate

Each hook is called over ``Federation.defenses`` in list order, which ``bench.engine.runner.plan`` makes the
declared one (``bench.api.defense.in_slot_order``); the transport and the aggregation rule are the one
defense of their slot (``bench.api.defense.composition_problem`` refuses two at planning).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bench.api.attack import Attack, ServerHold
from bench.api.defense import Defense, DefenseSlot, Transport
from bench.api.errors import DivergedError
from bench.api.protocol import Protocol
from bench.api.registry import PROTOCOLS
from bench.api.seeding import generator
from bench.api.transcript import GroundTruth, RoundRecord, Transcript
from bench.api.vocabulary import Record
from bench.client import batched
from bench.client.training import LocalJob, Trainer, job_rng, train_local
from bench.world.partition import ClientData

if TYPE_CHECKING:  # the field types of Federation below, named in annotations only
    from tqdm import tqdm

    from bench.api.method import Method
    from bench.spec.scenario import Federation as FederationConfig


@dataclass
class Federation:
    """Everything the round loop needs; built by ``bench.engine.runner``."""

    method: Method
    model: nn.Module
    clients: list[ClientData]
    collate: Callable[[list[dict]], dict[str, torch.Tensor]]
    settings: FederationConfig
    """``bench.spec.scenario.Federation``."""
    seed_parts: tuple[int | str, ...]
    defenses: list[Defense] = field(default_factory=list)
    attackers: list[Attack] = field(default_factory=list)
    malicious: tuple[int, ...] = ()
    keep: frozenset[str] = frozenset()
    """Transcript parts to keep: ``client_updates``, ``global_states``, ``client_batches``."""
    trainer: Trainer = train_local
    progress: tqdm | None = None
    global_state: torch.Tensor | None = None
    """The flat state broadcast this round (set by the loop)."""
    observers: list[Callable[[int, torch.Tensor], None]] = field(default_factory=list)
    """Called as ``observer(round, new_global_state)`` after each round (a learning curve)."""
    public: list[Record] = field(default_factory=list)
    """The task's public records (disjoint from every client): where a protocol draws its proxy set."""
    protocol: Protocol | None = None
    """The round protocol; None: the one ``settings.protocol`` names, built by ``run``."""


@dataclass
class FederationStats:
    client_s: float = 0.0
    server_s: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    plain_bytes_up: int = 0
    train_losses: list[float] = field(default_factory=list)
    batching: batched.Batching = field(default_factory=batched.Batching)


def transport_of(defenses: list[Defense]) -> Transport:
    carrier = slot_holder(defenses, DefenseSlot.TRANSPORT)
    transport = carrier.transport() if carrier is not None else None
    return transport if transport is not None else Transport()


def slot_holder(defenses: list[Defense], slot: DefenseSlot) -> Defense | None:
    """The one defense filling ``slot`` (TRANSPORT, AGGREGATION), or None; planning refuses two, and a
    hand-built federation that has two is an error here rather than one of them silently ignored."""
    holders = [d for d in defenses if d.slot is slot]
    if len(holders) > 1:
        raise ValueError(f"at most one {slot.value} defense per federation, got {' and '.join(d.name for d in holders)}")
    return holders[0] if holders else None


def run(fed: Federation, transcript: Transcript, truth: GroundTruth) -> FederationStats:
    """Run every round; fills ``transcript`` (what vantages saw) and ``truth`` (client batches)."""
    stats = FederationStats()
    transport = transport_of(fed.defenses)
    global_state = fed.method.get_flat()
    if fed.protocol is None:
        fed.protocol = PROTOCOLS.get(fed.settings.protocol)(fed.settings)
    fed.protocol.setup(fed)
    for round_index in range(fed.settings.rounds):
        global_state = tampered_broadcast(fed, round_index, global_state)
        global_state = _round(fed, round_index, global_state, transport, transcript, truth, stats)
        for observe in fed.observers:
            observe(round_index, global_state)
        if fed.progress is not None:
            fed.progress.update(1)
    fed.method.set_flat(global_state)
    return stats


def tampered_broadcast(fed: Federation, r: int, global_state: torch.Tensor) -> torch.Tensor:
    """The state the server broadcasts in round ``r``: ``global_state``, unless a malicious server
    (``Attack.tampers_broadcast``) rewrites it; the transcript records what was broadcast. The Flower
    engines do not call this hook, so such an attack finds an untampered broadcast there and says so."""
    # isinstance: a participant that only implements the client hooks (a duck-typed double) declares nothing here
    for attacker in (a for a in fed.attackers if isinstance(a, Attack) and a.tampers_broadcast):
        hold = ServerHold(method=fed.method, public=fed.public, collate=fed.collate)
        global_state = attacker.tamper_broadcast(r, global_state, hold, generator(*fed.seed_parts, "tamper", r, attacker.name))
    return global_state


def _round(fed: Federation, r: int, global_state: torch.Tensor, transport: Transport, transcript: Transcript,
           truth: GroundTruth, stats: FederationStats) -> torch.Tensor:
    sampled, record, rng = begin_round(fed, r, global_state)
    if not fed.protocol.shares_parameters:  # kd, split: messages that are not parameter updates
        return _exchange(fed, r, sampled, record, global_state, transcript, truth, stats)
    started = time.perf_counter()
    updates = _train_clients(fed, r, sampled, global_state, truth, stats)
    return finish_round(fed, r, record, rng, updates, global_state, transport, transcript, stats, started)


def begin_round(fed: Federation, r: int, global_state: torch.Tensor) -> tuple[list[int], RoundRecord, torch.Generator]:
    """Round ``r``'s sampled clients, its (still empty) record and the round's generator; the method and
    ``fed.global_state`` are told the round started. An engine that trains the clients elsewhere (Flower)
    calls this, trains, then calls ``finish_round``: the server side stays this module's."""
    s = fed.settings
    rng = generator(*fed.seed_parts, "round", r)
    sampled = sorted(torch.randperm(s.clients, generator=rng)[: s.clients_per_round].tolist())
    record = RoundRecord(round=r, sampled=sampled)
    fed.global_state = global_state
    fed.method.on_round_start(r, s.rounds)
    record.sequences_per_example = fed.method.sequences_per_example  # after the phase switch: this round's
    record.last_token_is_label = fed.method.last_token_is_label
    if "global_states" in fed.keep:
        record.global_before = global_state.clone()
    return sampled, record, rng


def finish_round(fed: Federation, r: int, record: RoundRecord, rng: torch.Generator, updates: dict[int, torch.Tensor],
                 global_state: torch.Tensor, transport: Transport, transcript: Transcript, stats: FederationStats,
                 started: float) -> torch.Tensor:
    """The server side of round ``r`` from the clients' trained ``updates`` (in sampled order): participant
    attacks, client-update defenses, transport, aggregation; appends the round's record to ``transcript``
    and returns the next global state. ``started``: when the clients' part began (for ``stats.client_s``)."""
    s = fed.settings
    sampled = record.sampled
    updates = _apply_participant_attacks(fed, r, updates, rng)
    for defense in fed.defenses:
        updates = {c: defense.on_client_update(r, c, u, generator(*fed.seed_parts, "clip", r, c)) for c, u in updates.items()}
    uniform = any(d.requires_uniform_weights for d in fed.defenses)
    weights = {c: 1.0 if uniform else float(len(fed.clients[c].members)) for c in sampled}
    # The record holds the example counts clients reported. Uniform aggregation (DP-FedAvg) asks for none,
    # so there is nothing to record: storing the 1.0 weights there told every inversion attack that each
    # client held one sequence, which capped DAGER at half of a batch of two under dp-central.
    record.weights = {} if uniform else weights
    messages = transport.encode(r, updates, weights, generator(*fed.seed_parts, "transport", r))
    stats.client_s += time.perf_counter() - started
    stats.bytes_up += sum(transport.message_bytes(m) for m in messages.values())
    stats.plain_bytes_up += sum(int(u.numel()) * 4 for u in updates.values())
    stats.bytes_down += int(global_state.numel()) * 4 * len(sampled)
    if "client_updates" in fed.keep:
        record.transmitted = messages
    started = time.perf_counter()
    aggregate = _aggregate(fed, r, transport, messages, weights)
    survivors = transport.survivors(r, messages)  # dropouts: the aggregate averages these, not all sampled
    for defense in fed.defenses:
        aggregate = defense.on_aggregate(r, aggregate, survivors, generator(*fed.seed_parts, "server", r))
    stats.server_s += time.perf_counter() - started
    check_finite(r, None, "aggregate", aggregate)
    record.aggregate = aggregate if "aggregates" in fed.keep else None
    transcript.rounds.append(record)
    step = s.server_lr * aggregate.to(global_state.dtype)
    step += global_state  # global_state + step, bit for bit (addition commutes), in the step's buffer
    return step


def _exchange(fed: Federation, r: int, sampled: list[int], record: RoundRecord, global_state: torch.Tensor,
              transcript: Transcript, truth: GroundTruth, stats: FederationStats) -> torch.Tensor:
    """A round of a protocol whose messages are not parameter updates (``bench.api.protocol``): each
    sampled client's message, then the server's combination of them into the next global state."""
    protocol = fed.protocol
    weights = {c: float(len(fed.clients[c].members)) for c in sampled}
    record.weights = weights
    started = time.perf_counter()
    messages = {c: protocol.client_message(fed, r, c, global_state) for c in sampled}
    messages = protocol.seal(r, messages, weights, generator(*fed.seed_parts, "transport", r))
    stats.client_s += time.perf_counter() - started
    stats.bytes_up += sum(protocol.message_bytes(m) for m in messages.values())
    stats.plain_bytes_up += protocol.plain_bytes(fed) * len(sampled)
    stats.bytes_down += protocol.download_bytes(fed, global_state) * len(sampled)
    stats.bytes_down += sum(protocol.reply_bytes(m) for m in messages.values())
    if "client_batches" in fed.keep:
        for c, m in messages.items():
            trained = protocol.trained_on(m)
            if trained is not None:
                truth.client_batches[(r, c)] = trained
    if "client_updates" in fed.keep:
        record.transmitted = protocol.transcript_parts(messages)
        record.channel = protocol.round_public()
    started = time.perf_counter()
    new_state = protocol.combine(fed, r, messages, weights, global_state)
    stats.server_s += time.perf_counter() - started
    if "client_updates" in fed.keep or "aggregates" in fed.keep:
        record.aggregate = protocol.server_sum()
    check_finite(r, None, "global state", new_state)
    transcript.rounds.append(record)
    return new_state


def train_client(fed: Federation, r: int, client: int, global_state: torch.Tensor, truth: GroundTruth,
                 stats: FederationStats) -> torch.Tensor:
    """One client's round-``r`` update from ``global_state``, trained alone (as with ``client_batch: 1``), with
    the client-side defenses; for an engine whose clients run elsewhere. The caller has told the method
    the round started (``begin_round`` on the server, ``fed.method.on_round_start`` on a client)."""
    fed.global_state = global_state
    return _train_client(fed, r, client, global_state, truth, stats)


def check_finite(r: int, client: int | None, what: str, value: float | torch.Tensor | None) -> None:
    """Fail the run at the first non-finite loss, update or aggregate: a diverged model still yields
    numbers (accuracy at chance, AUC 0.5) that would otherwise be recorded as a measurement."""
    if value is None:  # a trainer that reports no loss
        return
    tensor = torch.as_tensor(value)
    if not tensor.is_floating_point() or _all_finite(tensor):
        return
    bad = int((~torch.isfinite(tensor)).sum())
    who = f"client {client}'s " if client is not None else "the "
    detail = f"{float(tensor):g}" if tensor.numel() == 1 else f"{bad} of {tensor.numel()} values non-finite"
    raise DivergedError(f"diverged in round {r}: {who}{what} is not finite ({detail})")


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value is finite, without a mask as large as the tensor (a 135M-parameter update's
    would be 135 MB, allocated for every client and round): a sum is finite only if every term is (one
    inf or nan makes it inf or nan), so a finite sum settles it; a non-finite sum (a nan, an inf, or
    finite values that overflow float32 when added) is settled value by value."""
    if bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())


def server_update(fed: Federation, r: int, root: list[Record]) -> torch.Tensor:
    """The update the server itself would send, trained on ``root`` from this round's global state."""
    job = _job(fed, r, -1, fed.global_state, root)
    with job_rng(job):  # dropout inside any trainer (DP-SGD too) draws from the job's seed
        fed.trainer(job)
    return fed.method.get_flat() - fed.global_state


def _job(fed: Federation, r: int, client: int, global_state: torch.Tensor, examples: list[Record],
         load: bool = True) -> LocalJob:
    """Client ``client``'s job; ``load``: set the model to ``global_state`` first (False: it holds it already)."""
    s = fed.settings
    if load:
        fed.method.set_flat(global_state)
    fedsgd = s.protocol == "fedsgd"
    return LocalJob(
        model=fed.method.model,
        parameters=[p for _, p in fed.method.named_trainable],
        examples=examples,
        collate=fed.collate,
        example_losses=fed.method.example_losses,
        steps=1 if fedsgd else s.local_steps,
        batch_size=s.batch_size,
        lr=s.lr,
        optimizer="sgd" if fedsgd else s.optimizer,  # FedSGD transmits lr * gradient
        rng=generator(*fed.seed_parts, "client", r, client),
        client=client,
        report_step=fedsgd,
    )


def _train_clients(fed: Federation, r: int, sampled: list[int], global_state: torch.Tensor, truth: GroundTruth,
                   stats: FederationStats) -> dict[int, torch.Tensor]:
    """The sampled clients' local training, as one batched computation per group of clients where
    ``bench.client.batched`` applies (the reason is counted where it does not), otherwise one after another;
    either way the updates come out in sampled order and leave the model as the last client's."""
    reason = batched.refusal(fed, stats.batching)
    if reason is not None:
        stats.batching.sequential(reason, len(sampled))
        return {c: _train_client(fed, r, c, global_state, truth, stats) for c in sampled}
    fed.method.set_flat(global_state)  # once: every batched job starts from it and leaves the model alone
    jobs = {c: _job(fed, r, c, global_state, fed.clients[c].members, load=False) for c in sampled}
    trained = batched.train_round(fed, jobs, stats.batching)
    updates = {}
    for c in sampled:
        if c not in trained:
            updates[c] = _train_client(fed, r, c, global_state, truth, stats)
            continue
        updates[c] = _finish_client(fed, r, c, jobs[c], trained[c].result, global_state, trained[c].after, truth, stats)
    if sampled[-1] in trained:
        fed.method.set_flat(trained[sampled[-1]].after)
    return updates


def _train_client(fed: Federation, r: int, client: int, global_state: torch.Tensor, truth: GroundTruth,
                  stats: FederationStats) -> torch.Tensor:
    job = _job(fed, r, client, global_state, fed.clients[client].members)
    trainer = fed.trainer
    for defense in fed.defenses:
        trainer = defense.wrap_training(trainer, client, job.rng)
    with job_rng(job):  # dropout inside any trainer (DP-SGD too) draws from the job's seed
        result = trainer(job)
    return _finish_client(fed, r, client, job, result, global_state, fed.method.get_flat(), truth, stats)


def _finish_client(fed: Federation, r: int, client: int, job: LocalJob, result: dict[str, float],
                   global_state: torch.Tensor, after: torch.Tensor, truth: GroundTruth,
                   stats: FederationStats) -> torch.Tensor:
    stats.train_losses.append(float(result.get("loss", float("nan"))))
    if not job.seen or any(job.seen):  # a DP-SGD client whose Poisson batches were all empty has no loss
        check_finite(r, client, "training loss", result.get("loss"))
    if "client_batches" in fed.keep:
        trained_on = list(dict.fromkeys(i for step in job.seen for i in step))
        truth.client_batches[(r, client)] = _token_ids(fed, job, trained_on)
    update = transmitted_update(fed.settings.protocol, job, global_state, after)
    check_finite(r, client, "update", update)
    return update


def transmitted_update(protocol: str, job: LocalJob, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """What a client sends: its weight difference, or under FedSGD its step itself (-lr x the
    gradient), when the trainer reports one that the weights confirm (a wrapped trainer that changed
    the weights after the step falls back to the difference)."""
    difference = after - before
    step = job.step_update
    if protocol != "fedsgd" or step is None or step.shape != difference.shape:
        return difference
    step = step.to(difference.device, difference.dtype)
    ulp = torch.nextafter(after.abs(), torch.full_like(after, float("inf"))) - after.abs()
    agrees = (step - difference).abs() <= ulp + 1e-6 * step.abs()
    return step if bool(agrees.all()) else difference


def _token_ids(fed: Federation, job: LocalJob, indices: list[int]) -> list[list[int]]:
    if not indices:  # Poisson sampling (DP-SGD) may draw empty batches
        return []
    batch = fed.collate([job.examples[i] for i in indices])
    return [row[m].tolist() for ids, mask in fed.method.trained_sequences(batch)  # RLHF: chosen and rejected
            for row, m in zip(ids.cpu(), mask.cpu().bool())]


def _apply_participant_attacks(fed: Federation, r: int, updates: dict[int, torch.Tensor], rng: torch.Generator):
    malicious = [c for c in updates if c in fed.malicious]
    if not malicious:
        return updates
    for attacker in fed.attackers:
        updates = attacker.poison_updates(r, updates, malicious, generator(*fed.seed_parts, "poison", r, attacker.name))
    return updates


def _aggregate(fed: Federation, r: int, transport: Transport, messages: dict[int, Any], weights: dict[int, float]):
    rule = slot_holder(fed.defenses, DefenseSlot.AGGREGATION)
    if rule is None:
        return transport.aggregate(r, messages, weights)
    individual = transport.decode_individual(messages)
    clients = sorted(individual)
    stacked = torch.stack([individual[c] for c in clients])
    weight_vector = torch.tensor([weights[c] for c in clients])
    return rule.aggregate(r, stacked, weight_vector, generator(*fed.seed_parts, "robust", r))
