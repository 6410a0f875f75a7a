"""Batched multi-client training (bench.client.batched) equals training the clients one after another.

The oracle is the sequential path (``client_batch: 1``), which is the round loop as it was before
batching existed. Tolerances (float kernels summing in another order; batched attention is eager):
- float64 (the same function, rounding aside), every method x {SGD, Adam} x {FedAvg, FedSGD}:
  updates, aggregates and global states elementwise to rtol 1e-6, atol 1e-8 (observed <= 4e-9);
- float32 (what a run computes): SGD and FedSGD elementwise to rtol 1e-4, atol 1e-6; Adam divides
  each gradient by its running RMS, so a gradient at rounding level (~1e-8, below Adam's eps scale)
  moves its weight by a rounding-dependent fraction of lr: Adam updates agree in relative L2 norm to
  2e-2 (observed 1e-4 for PEFT methods, 6e-3 for full fine-tuning at lr 0.01), losses to 1e-3 (1e-4 with SGD);
- client batches (ground truth), sampling and weights exactly.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from bench.client import batched, vmapped
from bench.engine import federation as fl
from bench.engine.runner import plan, prepare
from tests.helpers import make_scenario

RTOL, ATOL = 1e-4, 1e-6
RTOL64, ATOL64 = 1e-6, 1e-8
ADAM_REL_L2 = 2e-2
METHODS = ["lora", "adapter", "prompt-tuning", "prefix-tuning", "fft"]
KEEP = frozenset({"client_updates", "client_batches", "aggregates", "global_states"})


def _train(tmp_path, client_batch, dtype=torch.float32, **overrides):
    federation = {"clients": 4, "clients_per_round": 3, "rounds": 2, "local_steps": 3, "batch_size": 3,
                  "lr": 0.01, "examples_per_client": 12, "client_batch": client_batch, **overrides.pop("federation", {})}
    scenario = make_scenario(tmp_path, federation=federation, **overrides)
    p = prepare(scenario, 0, plan(scenario))
    p.fed.method.model.to(dtype)  # float64: the two paths compute the same function, rounding aside
    p.fed.keep = KEEP
    stats = fl.run(p.fed, p.transcript, p.truth)
    return p, stats


def assert_same_training(sequential, batched_run, rtol=RTOL, atol=ATOL, adam=False):
    (p, s), (q, t) = sequential, batched_run
    close = _norm_close if adam else lambda x, y: torch.testing.assert_close(y, x, rtol=rtol, atol=atol)
    assert len(p.transcript.rounds) == len(q.transcript.rounds)
    for a, b in zip(p.transcript.rounds, q.transcript.rounds):
        assert a.sampled == b.sampled and a.weights == b.weights
        assert sorted(a.transmitted) == sorted(b.transmitted)
        for c in a.transmitted:
            close(a.transmitted[c], b.transmitted[c])
        close(a.aggregate, b.aggregate)
        close(a.global_before, b.global_before)
    assert q.truth.client_batches == p.truth.client_batches
    assert t.train_losses == pytest.approx(s.train_losses, rel=10 * RTOL if adam else RTOL, abs=ATOL)
    close(p.fed.method.get_flat(), q.fed.method.get_flat())


def _norm_close(expected, actual):
    assert float((actual - expected).norm()) <= ADAM_REL_L2 * float(expected.norm()) + ATOL


# The default suite keeps one combination per method, covering both optimizers and both protocols; the
# other 15 of the 20 are `slow` (about 25 s each on 2 cores), run by `make test-all`.
DEFAULT_COMBINATIONS = {("fft", "sgd", "fedavg"), ("lora", "sgd", "fedsgd"), ("adapter", "adam", "fedsgd"),
                        ("prompt-tuning", "adam", "fedavg"), ("prefix-tuning", "adam", "fedavg")}


@pytest.mark.parametrize(("method", "optimizer", "protocol"), [
    c if c in DEFAULT_COMBINATIONS else pytest.param(*c, marks=pytest.mark.slow)
    for c in itertools.product(METHODS, ["sgd", "adam"], ["fedavg", "fedsgd"])])
def test_batched_training_computes_what_sequential_does(tmp_path, method, optimizer, protocol):
    settings = {"federation": {"optimizer": optimizer, "protocol": protocol}, "method": method}
    sequential = _train(tmp_path, 1, torch.float64, **settings)
    together = _train(tmp_path, "auto", torch.float64, **settings)
    assert sequential[1].batching.batched_clients == 0
    assert sequential[1].batching.reasons == {"client_batch is 1": 6}
    assert together[1].batching.batched_clients == 6 and together[1].batching.groups == 2  # every client, batched
    assert_same_training(sequential, together, RTOL64, ATOL64)
    if protocol == "fedsgd":  # the gradient itself is sent, not a weight difference
        update = together[0].transcript.rounds[0].transmitted
        assert all(u.abs().sum() > 0 for u in update.values())


@pytest.mark.parametrize(("method", "optimizer"), [
    c if c in {("lora", "adam"), ("fft", "sgd")} else pytest.param(*c, marks=pytest.mark.slow)
    for c in itertools.product(METHODS, ["sgd", "adam"])])
def test_batched_training_in_float32_agrees_with_sequential(tmp_path, method, optimizer):
    settings = {"federation": {"optimizer": optimizer}, "method": method}
    sequential, together = _train(tmp_path, 1, **settings), _train(tmp_path, "auto", **settings)
    assert together[1].batching.batched_clients == 6
    assert_same_training(sequential, together, adam=optimizer == "adam")


@pytest.mark.parametrize("method", ["lora", pytest.param("fft", marks=pytest.mark.slow)])
def test_batched_equals_sequential_on_tiny_llama_language(tmp_path, method):
    settings = {"model": "tiny-llama", "method": method,
                "task": {"name": "synthetic-instructions", "params": {"max_length": 48}}}
    sequential = _train(tmp_path, 1, **settings)
    together = _train(tmp_path, 2, **settings)  # groups of 2 and 1: the single one trains alone
    assert together[1].batching.groups == 2 and together[1].batching.batched_clients == 4
    assert together[1].batching.reasons == {"group of one at client_batch 2": 2}
    assert_same_training(sequential, together, adam=True)  # Llama's RMSNorm computes in float32 even in float64


PREFERENCES = {"name": "synthetic-preferences", "params": {"max_length": 48}}


@pytest.mark.parametrize(("reward_model", "optimizer"), [("likelihood", "adam"), ("head", "sgd")])
def test_batched_rlhf_computes_what_sequential_does_in_both_phases(tmp_path, reward_model, optimizer):
    # Round 0 trains the reward adapter (Bradley-Terry), round 1 the policy (DPO against the base with
    # every adapter off): the model's own reward/logprobs methods must see each client's tensors, and the
    # flat state carries the phase's untouched half unchanged.
    settings = {"federation": {"optimizer": optimizer, "batch_size": 2}, "task": PREFERENCES,
                "method": {"name": "rlhf", "params": {"reward_model": reward_model}}}
    sequential = _train(tmp_path, 1, torch.float64, **settings)
    together = _train(tmp_path, "auto", torch.float64, **settings)
    assert together[1].batching.record()["batched_clients"] == 6, together[1].batching.reasons
    assert_same_training(sequential, together, RTOL64, ATOL64)
    method = together[0].fed.method
    policy = torch.tensor([name in method._policy_names for name, p in method._named for _ in range(p.numel())])
    reward_round, policy_round = together[0].transcript.rounds
    for update in reward_round.transmitted.values():
        assert update[policy].abs().max() == 0 and update[~policy].abs().max() > 0
    for update in policy_round.transmitted.values():
        assert update[~policy].abs().max() == 0 and update[policy].abs().max() > 0


def test_rlhf_that_samples_responses_in_its_loss_trains_sequentially_and_says_why(tmp_path):
    scenario = make_scenario(tmp_path, task=PREFERENCES, method={"name": "rlhf", "params": {"policy_step": "reward"}})
    p = prepare(scenario, 0, plan(scenario))
    assert batched.refusal(p.fed, batched.Batching()) == "method rlhf samples responses in its loss (policy_step: reward)"


def test_client_batch_one_never_enters_the_batched_code(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("client_batch 1 must train sequentially")

    monkeypatch.setattr(batched, "train_round", forbidden)
    _, stats = _train(tmp_path, 1)
    assert stats.batching.record()["sequential_clients"] == 6


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_every_metric_of_a_run_agrees(tmp_path, optimizer):
    from bench.engine.runner import execute

    def metrics(client_batch):
        scenario = make_scenario(tmp_path, attacks=["mia-loss", "inversion-tokens"], federation={
            "clients": 4, "clients_per_round": 4, "rounds": 2, "optimizer": optimizer, "client_batch": client_batch})
        rows = execute(scenario, 0)
        assert all(r.status == "ok" for r in rows), [r.error for r in rows]
        return {(r.attack, r.metric): r.value for r in rows if not r.metric.endswith(TIMES)}, rows[0].extra

    (sequential, _), (together, extra) = metrics(1), metrics("auto")
    assert extra["train_batching"]["batched_clients"] == 8
    assert together.keys() == sequential.keys() and len(together) > 10
    for key, value in sequential.items():
        assert together[key] == pytest.approx(value, rel=1e-3, abs=1e-6), key


TIMES = ("_s", "mem_mb")
"""Metrics that measure the machine (seconds, memory), not the training."""


def test_dp_local_with_an_explicit_opacus_mode_trains_sequentially_with_its_reason(tmp_path):
    settings = {"defenses": [{"name": "dp-local", "params": {"noise_multiplier": 1.0, "grad_sample_mode": "ghost"}}]}
    _, stats = _train(tmp_path, "auto", **settings)
    assert stats.batching.batched_clients == 0
    assert stats.batching.reasons == {
        "dp-local grad_sample_mode ghost: Opacus trains one client at a time (auto trains a round's clients together)": 6}


def test_dropout_falls_back_to_sequential(tmp_path):
    _, stats = _train(tmp_path, "auto", method={"name": "lora", "params": {"dropout": 0.1}})
    assert stats.batching.batched_clients == 0
    assert list(stats.batching.reasons) == ["dropout 0.1 at " + next(iter(stats.batching.reasons)).split(" at ", 1)[1]]


def test_clients_whose_batch_size_differs_train_alone(tmp_path):
    # Dirichlet partitions deal clients different numbers of records; those below batch_size train on smaller batches.
    settings = {"federation": {"partition": "dirichlet", "alpha": 0.3, "batch_size": 6, "clients": 6, "clients_per_round": 6}}
    sequential = _train(tmp_path, 1, **settings)
    together = _train(tmp_path, "auto", **settings)
    sizes = {min(6, len(c.members)) for c in together[0].clients}
    assert len(sizes) > 1, "the partition must give clients different batch sizes for this test to mean anything"
    assert together[1].batching.batched_clients > 0
    assert_same_training(sequential, together, adam=True)


def test_a_model_vmap_refuses_trains_sequentially_and_says_why(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("vmap: data-dependent control flow")

    monkeypatch.setattr(vmapped, "vmappable", refuse)
    sequential = _train(tmp_path, 1)
    refused = _train(tmp_path, "auto")
    assert refused[1].batching.batched_clients == 0
    assert refused[1].batching.reasons == {"forward cannot be vmapped: vmap: data-dependent control flow": 6}
    assert_same_training(sequential, refused, 0, 0)  # the fallback is the sequential path itself


def test_the_run_records_how_it_trained(tmp_path):
    from bench.engine.runner import execute

    rows = execute(make_scenario(tmp_path, federation={"clients": 3, "clients_per_round": 3, "rounds": 1}), 0)
    record = rows[0].extra["train_batching"]
    assert record["batched_clients"] == 3 and record["sequential_clients"] == 0 and record["reasons"] == {}


def test_client_batch_is_validated_and_outside_the_hash(tmp_path):
    from bench.api.errors import UserError

    auto = make_scenario(tmp_path)
    assert auto.federation.client_batch == "auto"
    assert make_scenario(tmp_path, federation={"client_batch": 4}).hash == auto.hash
    for bad in (0, "x", 2.5, True):
        with pytest.raises(UserError, match="client_batch"):
            make_scenario(tmp_path, federation={"client_batch": bad})


def test_auto_group_size_follows_free_memory(monkeypatch):
    model = torch.nn.Linear(4, 4)
    parameters = list(model.parameters())
    per_client = batched.client_bytes(model, parameters, 8, 32)
    monkeypatch.setattr(batched, "free_bytes", lambda device: int(per_client * 6 / batched.MEMORY_SHARE))
    assert batched.group_size("auto", model, parameters, 8, 32) == 6
    monkeypatch.setattr(batched, "free_bytes", lambda device: 0)
    assert batched.group_size("auto", model, parameters, 8, 32) == 1
    monkeypatch.setattr(batched, "free_bytes", lambda device: 1 << 60)
    assert batched.group_size("auto", model, parameters, 8, 32) == batched.CPU_CAP
    assert batched.group_size(3, model, parameters, 8, 32) == 3


def test_groups_are_balanced_and_split_by_batch_size():
    job = lambda n: dataclasses.make_dataclass("J", ["batch_size", "examples"])(4, [0] * n)  # noqa: E731
    jobs = {c: job(8) for c in range(10)} | {10: job(2)}
    groups, alone = batched.groups_of(jobs, 4)
    assert [len(g) for g in groups] == [3, 3, 4] and alone == [(10, "batch size differs from the other clients'")]
    assert sorted(c for g in groups for c in g) == list(range(10))


def test_padding_keeps_each_clients_tokens_and_masks_the_rest():
    short = {"input_ids": torch.tensor([[5, 6]]), "attention_mask": torch.tensor([[1, 1]]),
             "position_ids": torch.tensor([[0, 1]]), "labels": torch.tensor([[5, 6]])}
    long = {"input_ids": torch.tensor([[7, 8, 9]]), "attention_mask": torch.tensor([[1, 1, 1]]),
            "position_ids": torch.tensor([[0, 1, 2]]), "labels": torch.tensor([[7, 8, 9]])}
    model = torch.nn.Linear(1, 1)
    model.config = type("C", (), {"pad_token_id": 3})()
    out = vmapped.stack_batches([short, long], model)
    assert out["input_ids"].tolist() == [[[5, 6, 3]], [[7, 8, 9]]]
    assert out["attention_mask"].tolist() == [[[1, 1, 0]], [[1, 1, 1]]]
    assert out["labels"].tolist() == [[[5, 6, -100]], [[7, 8, 9]]]
    assert out["position_ids"].tolist() == [[[0, 1, 2]], [[0, 1, 2]]]
    pairs = vmapped.stack_batches([{f"rejected_{k}": v for k, v in b.items()} for b in (short, long)], model)
    assert {k.removeprefix("rejected_"): v.tolist() for k, v in pairs.items()} == {k: v.tolist() for k, v in out.items()}
    with pytest.raises(ValueError, match="rejected_token_type_ids"):
        vmapped.stack_batches([{"rejected_token_type_ids": short["input_ids"]}, {"rejected_token_type_ids": long["input_ids"]}], model)
