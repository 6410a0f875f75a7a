"""dp-local's clients trained together (bench.client.private_group) equal Opacus training them one at a time.

The oracle is the sequential path with an explicit Opacus mode (``hooks``), which is dp-local as it was
before its clients could batch: the same Poisson batches, per-example clipping, noise draws from each
client's generator and optimizer steps. Tolerances:
- float64: updates, aggregates and global states elementwise to rtol 1e-6, atol 1e-8 (observed for LoRA and
  FFT with noise on: equal to the last bit, the noise swamping the kernels' rounding; float32: 4e-9-1.5e-8
  absolute on updates of about 0.02);
- float32 with Adam: relative L2 norm 2e-2, as for plain batching (``tests/test_batched.py``);
- client batches (the Poisson draws, empty ones included), the ledger and epsilon exactly.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from bench.api.private_steps import poisson_batch
from bench.client import batched, private_group
from tests.test_batched import ATOL64, RTOL64, _train, assert_same_training

METHODS = ["lora", "adapter", "prompt-tuning", "prefix-tuning", "fft"]


def _dp(mode: str, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0, **params) -> list[dict]:
    return [{"name": "dp-local", "params": {"noise_multiplier": noise_multiplier, "max_grad_norm": max_grad_norm,
                                            "grad_sample_mode": mode, **params}}]


def _pair(tmp_path, dtype=torch.float64, federation=None, method="lora", **dp):
    settings = {"federation": {"batch_size": 2, **(federation or {})}, "method": method}
    sequential = _train(tmp_path, "auto", dtype, defenses=_dp("hooks", **dp), **settings)
    together = _train(tmp_path, "auto", dtype, defenses=_dp("auto", **dp), **settings)
    return sequential, together


DEFAULT_COMBINATIONS = {("lora", "adam", "fedavg"), ("fft", "sgd", "fedavg"), ("prompt-tuning", "sgd", "fedsgd"),
                        ("adapter", "adam", "fedavg"), ("prefix-tuning", "adam", "fedavg")}


@pytest.mark.parametrize(("method", "optimizer", "protocol"), [
    c if c in DEFAULT_COMBINATIONS else pytest.param(*c, marks=pytest.mark.slow)
    for c in itertools.product(METHODS, ["sgd", "adam"], ["fedavg", "fedsgd"])])
def test_dp_local_clients_trained_together_compute_what_opacus_does_one_at_a_time(tmp_path, method, optimizer, protocol):
    sequential, together = _pair(tmp_path, method=method, federation={"optimizer": optimizer, "protocol": protocol})
    assert sequential[1].batching.reasons == {
        "dp-local grad_sample_mode hooks: Opacus trains one client at a time (auto trains a round's clients together)": 6}
    assert together[1].batching.batched_clients == 6 and together[1].batching.groups == 2
    assert_same_training(sequential, together, RTOL64, ATOL64)
    (expected,), (got,) = sequential[0].fed.defenses, together[0].fed.defenses
    assert got.ledger.histories == expected.ledger.histories
    assert got.privacy()["dp.epsilon"] == expected.privacy()["dp.epsilon"]
    assert got.privacy()["dp.grad_sample_mode"] == "vmap" and expected.privacy()["dp.grad_sample_mode"] == "hooks"


def test_uneven_and_empty_poisson_batches_are_padded_out_of_the_sum(tmp_path, monkeypatch):
    # Batch size 1 of 12 records: q = 1/12, so about a third of the steps draw nothing and others two or more.
    draws = []

    def recording(n, rate, rng):
        drawn = poisson_batch(n, rate, rng)
        draws.append(len(drawn))
        return drawn

    monkeypatch.setattr(private_group, "poisson_batch", recording)
    sequential, together = _pair(tmp_path, federation={"batch_size": 1, "local_steps": 4})
    assert 0 in draws and max(draws) >= 2, "the draws must include an empty and an uneven batch for this test"
    assert_same_training(sequential, together, RTOL64, ATOL64)


def test_clipping_without_noise_is_the_same_function(tmp_path):
    # No noise to hide rounding, and a clip norm every per-example gradient exceeds: the clipped sums themselves,
    # under SGD (Adam would magnify a coordinate whose clipped sum is at rounding level to a step of lr).
    sequential, together = _pair(tmp_path, noise_multiplier=0.0, max_grad_norm=1e-3, federation={"optimizer": "sgd"})
    assert_same_training(sequential, together, RTOL64, ATOL64)
    update = together[0].transcript.rounds[0].transmitted
    assert all(u.abs().sum() > 0 for u in update.values())


def test_float32_adam_agrees_with_opacus(tmp_path):
    sequential, together = _pair(tmp_path, torch.float32, federation={"optimizer": "adam"})
    assert together[1].batching.batched_clients == 6
    assert_same_training(sequential, together, adam=True)


def test_the_audited_client_trains_alone_and_the_others_together(tmp_path):
    dp = {"audit_canaries": 8, "audit_client": 0}
    settings = {"federation": {"clients_per_round": 4}}
    sequential, together = (_train(tmp_path, "auto", torch.float64, defenses=_dp(mode, **dp), **settings)
                            for mode in ("hooks", "auto"))
    assert together[1].batching.reasons == {"defense dp-local trains this client alone": 2}  # client 0, two rounds
    assert together[1].batching.batched_clients == 6
    assert_same_training(sequential, together, RTOL64, ATOL64)
    (expected,), (got,) = sequential[0].fed.defenses, together[0].fed.defenses
    assert got.privacy()["dp.epsilon_lower"] == expected.privacy()["dp.epsilon_lower"]
    assert got.privacy()["dp.grad_sample_mode"] in {"hooks+vmap", "functorch+vmap", "ghost+vmap"}


def test_per_example_gradients_count_in_the_memory_estimate(tmp_path):
    p, _ = _train(tmp_path, 1)
    model, parameters = p.fed.method.model, [q for _, q in p.fed.method.named_trainable]
    plain = batched.client_bytes(model, parameters, 4, 32)
    private = batched.client_bytes(model, parameters, 4, 32, per_example=True)
    trainable = sum(q.numel() * q.element_size() for q in parameters)
    assert private - plain == 3 * 4 * trainable


@pytest.mark.parametrize("reward_model", ["likelihood", pytest.param("head", marks=pytest.mark.slow)])
def test_dp_local_rlhf_pairs_train_together_as_opacus_trains_them(tmp_path, reward_model):
    # One example is a preference pair (chosen and rejected): its gradient is clipped as one, in both phases.
    settings = {"federation": {"batch_size": 2}, "task": {"name": "synthetic-preferences", "params": {"max_length": 48}},
                "method": {"name": "rlhf", "params": {"reward_model": reward_model}}}
    sequential, together = (_train(tmp_path, "auto", torch.float64, defenses=_dp(mode), **settings) for mode in ("hooks", "auto"))
    assert together[1].batching.batched_clients == 6
    assert_same_training(sequential, together, RTOL64, ATOL64)


@pytest.mark.slow
def test_dp_local_on_tiny_llama_trains_together_as_opacus_does(tmp_path):
    settings = {"model": "tiny-llama", "task": {"name": "synthetic-instructions", "params": {"max_length": 48}}}
    sequential, together = (_train(tmp_path, "auto", torch.float64, defenses=_dp(mode), **settings) for mode in ("hooks", "auto"))
    assert together[1].batching.batched_clients == 6
    assert_same_training(sequential, together, adam=True)  # Llama's RMSNorm computes in float32 even in float64


def test_only_a_defense_that_replaces_training_may_state_it_for_batching():
    from bench.api.defense import Defense
    from bench.api.vocabulary import DefenseFamily

    with pytest.raises(TypeError, match="replaces_training"):
        class Wrapper(Defense):  # wraps training; batched training would never call its wrap_training
            family = DefenseFamily.DP

            def batching_problem(self):
                return None


def test_a_model_vmap_refuses_falls_back_even_when_the_first_step_drew_nothing(tmp_path, monkeypatch):
    from bench.client import vmapped

    calls = []

    def nothing_at_first(n, rate, rng):
        drawn = poisson_batch(n, rate, rng)
        calls.append(n)
        return [] if len(calls) <= 3 else drawn  # the first group's first step: three clients, three empty draws

    def refuse(*args, **kwargs):
        raise RuntimeError("vmap: data-dependent control flow")

    monkeypatch.setattr(private_group, "poisson_batch", nothing_at_first)
    monkeypatch.setattr(vmapped, "vmappable", refuse)
    _, stats = _train(tmp_path, "auto", defenses=_dp("auto"))
    assert stats.batching.batched_clients == 0
    assert stats.batching.reasons == {"forward cannot be vmapped: vmap: data-dependent control flow": 6}
