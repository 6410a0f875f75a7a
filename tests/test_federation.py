"""The round loop: hook order, FedAvg/FedSGD oracles, determinism."""

from __future__ import annotations

import torch

from bench.api.defense import Defense
from bench.api.transcript import GroundTruth, Transcript
from bench.api.vocabulary import DefenseFamily
from bench.engine import federation as fl
from bench.engine.runner import execute, plan, prepare
from tests.helpers import make_scenario


class RecordingDefense(Defense):
    name = "recording-defense"
    family = DefenseFamily.DP

    def __init__(self, calls):
        super().__init__(None)
        self.calls = calls

    def wrap_training(self, train_step, client, rng):
        def wrapped(job):
            self.calls.append(("train", client))
            return train_step(job)

        return wrapped

    def on_client_update(self, round_index, client, update, rng):
        self.calls.append(("client_update", round_index, client))
        return update

    def on_aggregate(self, round_index, aggregate, num_clients, rng):
        self.calls.append(("aggregate", round_index))
        return aggregate


class RecordingAttacker:
    name = "recording-attack"

    def __init__(self, calls):
        self.calls = calls

    def poison_updates(self, round_index, updates, malicious, rng):
        self.calls.append(("poison", round_index, tuple(malicious)))
        return updates


def test_hooks_are_called_in_the_documented_order(tmp_path):
    scenario = make_scenario(tmp_path, federation={"clients": 3, "clients_per_round": 2, "rounds": 2, "local_steps": 1})
    prepared = prepare(scenario, 0, plan(scenario))
    calls: list = []
    prepared.fed.defenses = [RecordingDefense(calls)]
    prepared.fed.attackers = [RecordingAttacker(calls)]
    prepared.fed.malicious = (0, 1, 2)
    fl.run(prepared.fed, prepared.transcript, prepared.truth)
    expected = []
    for r, record in enumerate(prepared.transcript.rounds):
        clients = record.sampled
        expected += [("train", c) for c in clients] + [("poison", r, tuple(clients))]
        expected += [("client_update", r, c) for c in clients]
        expected += [("aggregate", r)]
    assert calls == expected


def _gradient(prepared, examples):
    method = prepared.built.method
    method.model.train()
    batch = prepared.fed.collate(examples)
    for _, p in method.named_trainable:
        p.grad = None
    method.example_losses(method.model, batch).mean().backward()
    return torch.cat([p.grad.reshape(-1) for _, p in method.named_trainable])


def test_fedsgd_aggregate_is_the_weighted_mean_of_minus_lr_gradients(tmp_path):
    # Every client's members fit in one batch, so the client's step uses exactly its members.
    scenario = make_scenario(tmp_path, federation={"clients": 3, "clients_per_round": 3, "rounds": 1, "batch_size": 64,
                                                   "protocol": "fedsgd", "partition": "dirichlet", "alpha": 0.3,
                                                   "examples_per_client": 10, "lr": 0.1})
    prepared = prepare(scenario, 0, plan(scenario))
    start = prepared.built.method.get_flat()
    prepared.fed.keep = frozenset({"aggregates"})
    fl.run(prepared.fed, prepared.transcript, prepared.truth)
    expected = torch.zeros_like(start)
    counts = [len(c.members) for c in prepared.clients]
    assert len(set(counts)) > 1, "the Dirichlet split should give unequal clients, so weighting matters"
    prepared.built.method.set_flat(start)
    for client, count in zip(prepared.clients, counts):
        expected += (count / sum(counts)) * (-0.1 * _gradient(prepared, client.members))
    aggregate = prepared.transcript.rounds[0].aggregate
    assert torch.allclose(aggregate, expected, atol=1e-6, rtol=1e-4)


LR = 1e-4  # small next to the weights, so their float32 rounding is visible in a weight difference


def _sent_and_weight_difference(tmp_path, protocol):
    """One client, one SGD step on all its members: what it sent, -lr x its gradient, and what the
    weight difference would have been."""
    scenario = make_scenario(tmp_path, federation={"clients": 1, "clients_per_round": 1, "rounds": 1, "batch_size": 64,
                                                   "local_steps": 1, "optimizer": "sgd", "protocol": protocol,
                                                   "examples_per_client": 10, "lr": LR})
    prepared = prepare(scenario, 0, plan(scenario))
    start = prepared.built.method.get_flat()
    prepared.fed.keep = frozenset({"client_updates"})
    fl.run(prepared.fed, prepared.transcript, prepared.truth)
    moved = prepared.built.method.get_flat() - start  # the server applied the one client's update
    prepared.built.method.set_flat(start)
    step = -LR * _gradient(prepared, prepared.clients[0].members)
    return prepared.transcript.rounds[0].transmitted[0], step, moved


def _largest_error(update, step):
    return float((update - step).abs().max() / step.abs().max())


def test_fedsgd_sends_the_gradient_step_itself(tmp_path):
    sent, step, moved = _sent_and_weight_difference(tmp_path, "fedsgd")
    assert _largest_error(sent, step) < 1e-6  # summation order only (measured 8e-8)
    # the weight difference carries the weights' float32 rounding (measured 2.6e-5): what FedSGD avoids
    assert _largest_error(moved, step) > 1e-6


def test_fedavg_sends_the_weight_difference_even_for_one_step(tmp_path):
    sent, step, _ = _sent_and_weight_difference(tmp_path, "fedavg")
    assert 1e-6 < _largest_error(sent, step) < 1e-3


def test_a_step_the_weights_do_not_confirm_is_not_sent():
    from bench.client.training import LocalJob

    job = LocalJob(model=None, parameters=[], examples=[], collate=None, example_losses=None, steps=1, batch_size=1,
                   lr=0.1, optimizer="sgd", rng=torch.Generator())
    before, after = torch.ones(4), torch.tensor([0.9, 1.0, 1.0, 1.0])
    job.step_update = torch.tensor([-0.1, 0.0, 0.0, 0.0])
    assert torch.equal(fl.transmitted_update("fedsgd", job, before, after), job.step_update)
    job.step_update = torch.tensor([-0.1, 0.0, 0.0, 0.5])  # e.g. a wrapper moved the weights after the step
    assert torch.equal(fl.transmitted_update("fedsgd", job, before, after), after - before)


def test_one_client_fedavg_equals_central_training(tmp_path):
    scenario = make_scenario(tmp_path, federation={"clients": 1, "clients_per_round": 1, "rounds": 1, "local_steps": 3,
                                                   "optimizer": "sgd", "lr": 0.05})
    federated = prepare(scenario, 0, plan(scenario))
    start = federated.built.method.get_flat()
    fl.run(federated.fed, federated.transcript, federated.truth)
    after_federation = federated.built.method.get_flat()
    central = prepare(scenario, 0, plan(scenario))
    assert torch.equal(central.built.method.get_flat(), start)
    from bench.api.seeding import generator
    from bench.client.training import LocalJob, train_local

    method = central.built.method
    job = LocalJob(model=method.model, parameters=[p for _, p in method.named_trainable],
                   examples=central.clients[0].members, collate=central.fed.collate,
                   example_losses=method.example_losses, steps=3, batch_size=scenario.federation.batch_size, lr=0.05,
                   optimizer="sgd", rng=generator("run", 0, "client", 0, 0))
    train_local(job)
    assert torch.allclose(method.get_flat(), after_federation, atol=1e-6)
    assert not torch.equal(after_federation, start)


def test_same_scenario_and_seed_give_identical_metrics(tmp_path):
    scenario = make_scenario(tmp_path, attacks=["mia-loss"])
    first = {(r.attack, r.metric): r.value for r in execute(scenario, 0) if not r.metric.startswith("cost.")}
    second = {(r.attack, r.metric): r.value for r in execute(scenario, 0) if not r.metric.startswith("cost.")}
    assert first == second
    assert ("mia-loss", "mia.auc") in first and ("none", "utility.accuracy") in first
    other_seed = {(r.attack, r.metric): r.value for r in execute(scenario, 1) if not r.metric.startswith("cost.")}
    assert other_seed != first


def test_client_updates_are_kept_only_when_asked(tmp_path):
    scenario = make_scenario(tmp_path, federation={"rounds": 1, "local_steps": 1})
    prepared = prepare(scenario, 0, plan(scenario))
    fl.run(prepared.fed, prepared.transcript, prepared.truth)
    record = prepared.transcript.rounds[0]
    assert record.transmitted == {} and record.global_before is None and not prepared.truth.client_batches
    prepared = prepare(scenario, 0, plan(scenario))
    prepared.fed.keep = frozenset({"client_updates", "global_states", "client_batches"})
    transcript, truth = Transcript(), GroundTruth()
    fl.run(prepared.fed, transcript, truth)
    record = transcript.rounds[0]
    assert set(record.transmitted) == set(record.sampled) and record.global_before is not None
    assert set(truth.client_batches) == {(0, c) for c in record.sampled}


def test_a_failing_run_is_recorded_and_does_not_raise(tmp_path, monkeypatch):
    scenario = make_scenario(tmp_path)

    def explode(*args, **kwargs):
        raise FloatingPointError("loss is NaN")

    monkeypatch.setattr(fl, "run", explode)
    rows = execute(scenario, 0)
    assert len(rows) == 1 and rows[0].status == "failed" and "loss is NaN" in rows[0].error


def test_the_record_holds_reported_example_counts_and_none_under_uniform_weighting(tmp_path):
    # FedAvg clients report their example counts (the aggregation weights); DP-FedAvg weighs every client
    # 1 and asks for none, so the server's record has none. It used to hold the 1.0 weights, which the
    # inversion attacks read as "this client held one sequence" (DAGER capped at half a batch of two).
    federation = {"clients": 2, "clients_per_round": 2, "rounds": 1, "local_steps": 1, "examples_per_client": 6}
    for defenses, reported in (([], True), ([{"name": "dp-central", "params": {"noise_multiplier": 0.0}}], False)):
        scenario = make_scenario(tmp_path, federation=federation, defenses=defenses)
        prepared = prepare(scenario, 0, plan(scenario))
        fl.run(prepared.fed, prepared.transcript, prepared.truth)
        counts = {c: float(len(prepared.clients[c].members)) for c in (0, 1)}
        assert prepared.transcript.rounds[0].weights == (counts if reported else {}), defenses
