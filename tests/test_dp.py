"""dp-local (record-level DP-SGD with Opacus) and the shared accountants: oracles.

The DP-SGD step is checked against plain SGD/Adam (no noise, no clipping), a hand-computed clipped
mean and the noise's standard deviation; Poisson sampling against a replay of ``job.rng``; the
accountants for monotonicity and target-epsilon calibration. Per-sample gradients are tested in
``test_dp_per_sample.py``, dp-central in ``test_dp_central.py``, auditing in ``test_dp_audit.py``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from dp_helpers import (
    batch_of_one_gradients,
    dp_local,
    example_losses,
    flat,
    make_examples,
    make_job,
    plan,
    tiny_model,
)

from bench.api.config import bind
from bench.api.errors import UserError
from bench.api.private_steps import poisson_batch
from bench.api.registry import DEFENSES
from bench.client.training import train_local
from defenses.dp.accounting import Ledger, calibrate_noise, epsilon_for
from defenses.dp.central import DPCentral
from defenses.dp.local import DPLocal

# --- the DP-SGD step ------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_noiseless_unclipped_full_batch_dp_sgd_equals_plain_training(optimizer):
    examples = make_examples(8, seed=3)
    private, plain = tiny_model("llama", "fft"), tiny_model("llama", "fft")
    trainer = dp_local(noise_multiplier=0.0, max_grad_norm=1e6).wrap_training(train_local, 0, torch.Generator())
    result = trainer(make_job(private, examples, batch_size=8, optimizer=optimizer, lr=0.01))
    train_local(make_job(plain, examples, batch_size=8, optimizer=optimizer, lr=0.01))
    assert math.isfinite(result["loss"])
    assert not torch.equal(flat(private), flat(tiny_model("llama", "fft"))), "training must move the weights"
    # Adam normalises each coordinate: where a gradient is as small as its eps (1e-8), the float rounding
    # that separates a sum of per-sample gradients from the batch gradient moves the step by a visible
    # fraction of lr (measured: 0.26% of lr on one of 21,152 coordinates). A real departure (a missed
    # sample, clipping, noise) moves most coordinates by a large fraction of lr, so 1% of lr still catches it.
    torch.testing.assert_close(flat(private), flat(plain), rtol=1e-4, atol=1e-6 if optimizer == "sgd" else 1e-2 * 0.01)


@pytest.mark.parametrize("mode", ["hooks", "ghost", "functorch"])
def test_each_example_gradient_is_clipped_before_averaging(mode):
    examples, clip, lr = make_examples(5, seed=4), 0.01, 1.0
    model = tiny_model("llama", "lora")
    reference = copy.deepcopy(model)
    trainer = dp_local(noise_multiplier=0.0, max_grad_norm=clip, grad_sample_mode=mode).wrap_training(
        train_local, 0, torch.Generator()
    )
    trainer(make_job(model, examples, steps=1, batch_size=5, lr=lr))
    ref_job = make_job(reference, examples)
    clipped = []
    for grads in batch_of_one_gradients(ref_job, examples):
        g = torch.cat([x.reshape(-1) for x in grads])
        assert g.norm() > clip  # so that clipping is exercised
        clipped.append(g * (clip / g.norm()))
    expected = flat(reference) - lr * torch.stack(clipped).mean(0)
    torch.testing.assert_close(flat(model), expected, rtol=1e-4, atol=1e-7)


def test_noise_std_is_noise_multiplier_times_clip_over_expected_batch():
    z, clip, n = 2.0, 0.5, 4
    model = tiny_model("llama", "fft")
    before = flat(model)
    zero_loss = lambda m, b: example_losses(m, b) * 0.0  # noqa: E731 - gradients vanish; only noise moves weights
    trainer = dp_local(noise_multiplier=z, max_grad_norm=clip).wrap_training(
        train_local, 0, torch.Generator().manual_seed(5)
    )
    trainer(make_job(model, make_examples(n, seed=5), steps=1, batch_size=n, lr=1.0, losses=zero_loss))
    step = flat(model) - before
    assert abs(float(step.std()) / (z * clip / n) - 1) < 0.03
    assert abs(float(step.mean())) < 0.03 * z * clip / n


def test_poisson_batches_come_from_job_rng_at_rate_batch_over_n():
    g = torch.Generator().manual_seed(0)
    sizes = [len(poisson_batch(200, 0.1, g)) for _ in range(300)]
    assert abs(sum(sizes) / len(sizes) - 20) < 1.0 and len(set(sizes)) > 5
    examples = make_examples(40, seed=6)
    job = make_job(tiny_model("llama", "lora"), examples, steps=6, batch_size=1, seed=11)  # q = 1/40
    dp_local(noise_multiplier=1.0).wrap_training(train_local, 0, torch.Generator().manual_seed(1))(job)
    replay = torch.Generator().manual_seed(11)
    assert job.seen == [poisson_batch(40, 1 / 40, replay) for _ in range(6)]
    assert any(len(batch) == 0 for batch in job.seen), "an empty Poisson batch must still take a (noise) step"
    assert torch.isfinite(flat(job.model)).all()


def test_same_seeds_give_identical_training():
    def run() -> torch.Tensor:
        job = make_job(tiny_model("gpt2", "lora"), make_examples(12, seed=7), steps=3, batch_size=4)
        dp_local(noise_multiplier=1.0).wrap_training(train_local, 0, torch.Generator().manual_seed(2))(job)
        return flat(job.model)

    assert torch.equal(run(), run())


# --- accounting -----------------------------------------------------------------------------------


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_decreases_with_noise_and_increases_with_steps(accountant):
    by_noise = [epsilon_for([(z, 0.1, 50)], 1e-5, accountant) for z in (0.7, 1.0, 2.0, 4.0)]
    by_steps = [epsilon_for([(1.0, 0.1, steps)], 1e-5, accountant) for steps in (10, 50, 200)]
    assert all(a > b for a, b in zip(by_noise, by_noise[1:], strict=False)), by_noise
    assert all(a < b for a, b in zip(by_steps, by_steps[1:], strict=False)), by_steps
    assert epsilon_for([(0.0, 0.1, 5)], 1e-5, accountant) == math.inf
    assert epsilon_for([], 1e-5, accountant) == 0.0


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("target,q,steps", [(1.0, 0.05, 200), (4.0, 0.25, 30), (8.0, 1.0, 6)])
def test_target_epsilon_calibration_lands_within_five_percent(accountant, target, q, steps):
    z = calibrate_noise(target, 1e-5, q, steps, accountant)
    epsilon = epsilon_for([(z, q, steps)], 1e-5, accountant)
    assert 0.95 * target <= epsilon <= target * 1.001


def test_dp_local_calibrates_to_target_and_accounts_per_client():
    defense = dp_local(target_epsilon=3.0, delta=1e-5)
    defense.setup(plan(rounds=2, local_steps=3), {0: 12, 1: 12})
    for round_index in range(2):
        for client in (0, 1):
            job = make_job(tiny_model("llama", "lora"), make_examples(12, seed=client), steps=3, seed=round_index)
            defense.wrap_training(train_local, client, torch.Generator().manual_seed(round_index))(job)
    report = defense.privacy()
    assert 0.95 * 3.0 <= report["dp.epsilon"] <= 3.0 * 1.001
    assert report["dp.steps"] == 6 and report["dp.sampling_rate"] == pytest.approx(4 / 12)
    assert report["dp.level"] == "record" and report["dp.accountant"] == "rdp"
    assert report["dp.grad_sample_mode"] == "hooks" and report["dp.clip_norm"] == 1.0


def test_privacy_reports_the_worst_client_and_inf_without_noise():
    ledger = Ledger()
    ledger.record(0, 1.0, 0.1, 10)
    ledger.record(1, 1.0, 0.1, 10)
    ledger.record(1, 1.0, 0.1, 30)
    assert ledger.histories[1] == [(1.0, 0.1, 40)]
    assert ledger.worst(1e-5, "rdp")[0] == 1
    defense = dp_local(noise_multiplier=0.0)
    job = make_job(tiny_model("llama", "lora"), make_examples(8, seed=0), steps=1)
    defense.wrap_training(train_local, 0, torch.Generator())(job)
    assert defense.privacy()["dp.epsilon"] == math.inf


def test_config_errors_are_user_errors_and_defenses_are_registered():
    with pytest.raises(UserError, match="exactly one"):
        bind(DPLocal.Config, {"noise_multiplier": 1.0, "target_epsilon": 2.0}, file="s.yaml", key="defenses[0]")
    with pytest.raises(UserError, match="accountant"):
        bind(DPLocal.Config, {"noise_multiplier": 1.0, "accountant": "gdp"}, file="s.yaml", key="defenses[0]")
    with pytest.raises(UserError, match="finite clip_norm"):
        bind(DPCentral.Config, {"noise_multiplier": 1.0, "clip_norm": None}, file="s.yaml", key="defenses[0]")
    assert DEFENSES.get("dp-local") is DPLocal and DEFENSES.get("dp-central") is DPCentral
