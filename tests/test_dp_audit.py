"""One-run privacy auditing (Steinke, Nasr, Jagielski 2023): the bound itself, and an end-to-end
audit of dp-local on a tiny Llama with random-token canaries scored by their loss decrease.

Oracles: perfect guessing has a closed form; randomised response with a known epsilon must be
bounded below that epsilon (at the stated confidence) and not far below it; an audit of dp-local
never exceeds the accountant's epsilon, yet catches a trainer that claims noise it did not add.
"""

from __future__ import annotations

import math

import pytest
import torch
from dp_helpers import collate, dp_local, example_losses, make_examples, make_job, tiny_model

from bench.client.training import train_local
from defenses.dp.accounting import epsilon_for
from defenses.dp.audit import audit_one_run, audit_with_canaries, epsilon_lower_bound, p_value_dp


@pytest.mark.parametrize("r", [10, 40, 100])
def test_perfect_guessing_matches_the_closed_form(r):
    # With delta = 0 the bound solves P[Binomial(r, q) = r] = q^r = p for q = e^eps / (1 + e^eps).
    q = 0.05 ** (1 / r)
    assert epsilon_lower_bound(r, r, r, 0.0, 0.05) == pytest.approx(math.log(q / (1 - q)), rel=1e-6)


def test_p_value_grows_with_epsilon_and_delta_only_loosens_the_bound():
    values = [p_value_dp(100, 50, 40, eps, 1e-5) for eps in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert epsilon_lower_bound(100, 50, 45, 1e-3, 0.05) < epsilon_lower_bound(100, 50, 45, 0.0, 0.05)
    assert epsilon_lower_bound(100, 50, 25, 1e-5, 0.05) == 0.0  # chance-level guessing proves nothing


def randomised_response(epsilon: float, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of an exactly epsilon-DP mechanism: the inclusion bit, flipped w.p. 1 / (1 + e^eps)."""
    g = torch.Generator().manual_seed(seed)
    included = torch.rand(m, generator=g) < 0.5
    flipped = torch.rand(m, generator=g) < 1 / (1 + math.exp(epsilon))
    return (included ^ flipped).double() + 1e-3 * torch.rand(m, generator=g, dtype=torch.float64), included


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 2.0])
def test_bound_on_randomised_response_is_valid_and_not_vacuous(epsilon):
    bounds = [audit_one_run(*randomised_response(epsilon, 1000, seed), delta=1e-5) for seed in range(20)]
    # At 95% confidence at most ~1 in 20 may exceed the truth; 4 would be very unlikely (p < 0.02).
    assert sum(b > epsilon for b in bounds) <= 3, bounds
    assert sum(bounds) / len(bounds) > 0.6 * epsilon, bounds


def test_uninformative_scores_give_zero():
    g = torch.Generator().manual_seed(0)
    included = torch.rand(500, generator=g) < 0.5
    assert audit_one_run(torch.rand(500, generator=g), included, delta=1e-5) == 0.0
    with pytest.raises(ValueError):
        audit_one_run(torch.rand(3), torch.tensor([True, False]), delta=1e-5)


# --- end to end on dp-local -----------------------------------------------------------------------

CANARIES, STEPS, LR = 200, 30, 0.02


def audit_dp_local(
    noise_multiplier: float, sampling: float, accountant: str = "rdp", seed: int = 0
) -> tuple[float, float]:
    """(empirical epsilon lower bound, accountant epsilon) for one dp-local client trained on canaries."""
    model = tiny_model("llama", "fft", seed=seed)
    canaries = make_examples(CANARIES, seed=100 + seed)
    defense = dp_local(noise_multiplier=noise_multiplier, max_grad_norm=1.0, delta=1e-5, accountant=accountant)

    def train(included: list[dict]) -> None:
        job = make_job(
            model,
            included,
            steps=STEPS,
            batch_size=max(1, round(sampling * len(included))),
            lr=LR,
            optimizer="adam",
            seed=seed,
        )
        defense.wrap_training(train_local, 0, torch.Generator().manual_seed(seed))(job)

    def canary_losses(examples: list[dict]) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return example_losses(model, collate(examples))

    outcome = audit_with_canaries(canaries, train, canary_losses, 1e-5, torch.Generator().manual_seed(seed))
    assert int(outcome.included.sum()) not in (0, CANARIES)
    return outcome.epsilon_lower, defense.privacy()["dp.epsilon"]


@pytest.mark.parametrize(
    "noise_multiplier,sampling,accountant", [(10.0, 1.0, "rdp"), (6.0, 0.5, "prv"), (3.0, 1.0, "rdp")]
)
def test_audit_never_exceeds_the_accountant_epsilon(noise_multiplier, sampling, accountant):
    lower, upper = audit_dp_local(noise_multiplier, sampling, accountant)
    assert math.isfinite(upper) and 0.0 <= lower <= upper


def test_noiseless_memorisation_gives_a_clearly_positive_bound_that_exposes_missing_noise():
    lower, upper = audit_dp_local(0.0, 1.0)
    assert upper == math.inf
    assert lower > 2.0
    # A trainer that claimed z = 13 (epsilon ~1.8 for these 30 full-batch steps) but added no noise
    # is caught: the audit's lower bound exceeds the claimed epsilon.
    assert lower > epsilon_for([(13.0, 1.0, STEPS)], 1e-5, "rdp")


# --- inside a federated run: dp-local's audit_canaries --------------------------------------------


def _audited_scenarios(tmp_path, noise_multipliers, canaries=200, rounds=3):
    import yaml

    from bench.spec.scenario import load

    document = {
        "name": "audit", "tier": "open-weight", "model": "tiny-gpt2", "method": "fft",
        "task": {"name": "synthetic-clinical", "params": {"objective": "language", "max_length": 32}},
        "federation": {"clients": 2, "clients_per_round": 2, "rounds": rounds, "local_steps": 10, "batch_size": 16,
                       "lr": 0.01, "examples_per_client": 32, "eval_examples": 16},
        "matrix": {"defenses": [[{"name": "dp-local", "params": {
            "noise_multiplier": z, "audit_canaries": canaries, "grad_sample_mode": "hooks"}}] for z in noise_multipliers]},
    }
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(document))
    return load(path)


def _privacy_row(rows) -> dict[str, float]:
    assert all(r.status == "ok" for r in rows), [r.error for r in rows]
    return {r.metric: r.value for r in rows if r.metric.startswith("dp.")}


def test_an_audited_run_reports_a_lower_bound_below_the_accountant(tmp_path):
    from bench.engine.runner import execute

    (scenario,) = _audited_scenarios(tmp_path, [1.0], canaries=40, rounds=1)
    noisy = _privacy_row(execute(scenario, 0))
    assert 0.0 <= noisy["dp.epsilon_lower"] <= noisy["dp.audit_epsilon"] <= noisy["dp.epsilon"] < math.inf
    assert noisy["dp.audit_canaries"] == 40 and 0 < noisy["dp.audit_included"] < 40


@pytest.mark.slow  # two federated DP-SGD runs with 200 canaries: ~25 s of CPU
def test_audit_in_the_federation_catches_missing_noise_and_stays_below_the_accountant(tmp_path):
    from bench.engine.runner import execute

    noiseless, noisy = (_privacy_row(execute(s, 0)) for s in _audited_scenarios(tmp_path, [0.0, 1.0]))
    assert noiseless["dp.epsilon"] == math.inf and noiseless["dp.epsilon_lower"] > 0.5  # measured 1.02
    assert 0.0 <= noisy["dp.epsilon_lower"] <= noisy["dp.audit_epsilon"] <= noisy["dp.epsilon"] < math.inf
    assert noisy["dp.audit_canaries"] == 200 and 0 < noisy["dp.audit_included"] < 200


def test_audit_settings_are_checked():
    from defenses.dp.local import DPLocal

    with pytest.raises(ValueError, match="audit_canaries"):
        DPLocal.Config(noise_multiplier=1.0, audit_canaries=1)
    with pytest.raises(ValueError, match="audit_confidence"):
        DPLocal.Config(noise_multiplier=1.0, audit_canaries=10, audit_confidence=1.0)
    defense = DPLocal(DPLocal.Config(noise_multiplier=1.0, audit_canaries=10, audit_client=5))
    with pytest.raises(ValueError, match="audit_client 5 is not a client"):
        defense.setup(None, {0: 8, 1: 8})


def test_audited_client_trains_on_its_records_plus_the_included_canaries_only(tmp_path):
    from defenses.dp.audit import ClientAudit

    model = tiny_model("llama", "fft", seed=0)
    job = make_job(model, make_examples(12, seed=1), steps=2, batch_size=4, lr=0.01, optimizer="sgd", seed=0)
    audit = ClientAudit(canaries=20, seed=3)
    augmented = audit.augment(job)
    included = [c for c, flag in zip(audit.canaries, audit.included.tolist(), strict=True) if flag]
    assert augmented.examples == job.examples + included and augmented.seen == [] and job.examples is not augmented.examples
    assert audit.augment(job).examples == augmented.examples  # the same canaries on every participation
    assert audit.before.shape == (20,) and torch.isfinite(audit.before).all()
