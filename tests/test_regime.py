"""The trained regime's pieces: task data with something to learn, the base utility and the curve.

The regime's levels themselves (accuracy >= 0.8, ROUGE-L gain >= 0.2, reward accuracy in 0.6-0.95)
are checked on a fast configuration in ``test_regime_levels`` (slow)."""

from __future__ import annotations

import pytest
import torch

from bench.engine.learning import BASE, CURVE, LearningCurve
from bench.engine.runner import execute
from bench.scoring.score import Metric
from bench.world import synthetic
from bench.world.tasks import SyntheticClinical, SyntheticPreferences
from tests.helpers import make_scenario

OLD_REFUSALS = {"I cannot help with that.", "No idea.", "Ask someone else.", "That is not important."}


def _triples(n: int = 400) -> list[dict[str, str]]:
    rng = torch.Generator().manual_seed(0)
    return [synthetic.preference_triple(rng) for _ in range(n)]


def test_rejected_answers_differ_from_chosen_in_content_not_a_fixed_phrase():
    triples = _triples()
    rejected = [t["rejected"] for t in triples]
    assert all(t["rejected"] != t["chosen"] for t in triples)
    assert not set(rejected) & OLD_REFUSALS
    assert len(set(rejected)) > 0.9 * len(rejected)  # not a handful of fixed strings
    # A rejected answer is an answer to the same prompt: it shares most of the chosen one's words.
    shared = [len(set(t["rejected"].split()) & set(t["chosen"].split())) / len(set(t["chosen"].split()))
              for t in triples]
    assert sum(shared) / len(shared) > 0.5


def test_every_kind_of_rejection_occurs_and_some_are_not_decided_by_a_rule():
    triples = _triples()
    clinic = lambda text: text.split(" to ", 1)[1].split(" on ", 1)[0]  # noqa: E731
    wrong_clinic = sum(clinic(t["rejected"]) != clinic(t["chosen"]) for t in triples)
    other_patient = sum(t["rejected"].split(" to ")[0] != t["chosen"].split(" to ")[0] for t in triples)
    plan = lambda text: text.split("Plan: ", 1)[1]  # noqa: E731
    same_condition_plan = sum(
        clinic(t["rejected"]) == clinic(t["chosen"]) and plan(t["rejected"]) != plan(t["chosen"])
        and any(plan(t["rejected"]).rstrip(".") in plans and plan(t["chosen"]).rstrip(".") in plans
                for _, plans in synthetic.CONDITIONS.values())
        for t in triples)
    for count in (wrong_clinic, other_patient, same_condition_plan):
        assert 0.1 * len(triples) < count < 0.4 * len(triples)


def test_preference_records_no_longer_have_fixed_refusals():
    data = SyntheticPreferences(SyntheticPreferences.Config()).load(64, torch.Generator().manual_seed(1))
    assert not {r["rejected"] for r in data.pool} & OLD_REFUSALS


def test_triage_answers_follow_from_the_instruction_but_carry_a_private_date_and_plan():
    rng = torch.Generator().manual_seed(2)
    pairs = [synthetic.triage_pair(rng) for _ in range(200)]
    for pair in pairs:
        name = pair["instruction"].removeprefix("Patient ").split(" with ")[0]
        symptom = pair["instruction"].split(" with ", 1)[1].rstrip(".")
        condition = next(c for c, (symptoms, _) in synthetic.CONDITIONS.items() if symptom in symptoms)
        assert pair["response"].startswith(f"{name} to {synthetic.CLINICS[condition]} on 2026-")
    assert len({p["response"].split("Plan: ")[1] for p in pairs}) > 10


def test_atypical_notes_carry_another_conditions_symptoms_and_default_to_none():
    plain = SyntheticClinical(SyntheticClinical.Config(num_classes=3)).load(40, torch.Generator().manual_seed(3))
    again = SyntheticClinical(SyntheticClinical.Config(num_classes=3, atypical_fraction=0.0)).load(
        40, torch.Generator().manual_seed(3))
    assert plain.pool == again.pool  # the default draws nothing extra: records stay as they were
    atypical = SyntheticClinical(SyntheticClinical.Config(num_classes=3, atypical_fraction=1.0)).load(
        40, torch.Generator().manual_seed(3))
    for record in atypical.pool:
        own_symptoms = synthetic.CONDITIONS[synthetic.CONDITION_NAMES[record["label"]]][0]
        assert not any(s in record["text"] for s in own_symptoms)


def test_learning_curve_starts_at_the_base_and_keeps_every_round():
    values = iter([0.5, 0.7])
    curve = LearningCurve(lambda: [Metric("utility.accuracy", next(values))], lambda state: None,
                          base=[Metric(BASE + "accuracy", 0.3)])
    curve(0, torch.zeros(1))
    curve(1, torch.zeros(1))
    (metric,) = curve.metrics()
    assert metric.name == CURVE + "accuracy" and metric.value == 0.7
    assert metric.extra == {"curve": [[0, 0.3], [1, 0.5], [2, 0.7]]}


def _values(rows):
    return {r.metric: r.value for r in rows if r.attack == "none"}, {r.metric: r.extra for r in rows}


def test_a_run_reports_the_base_utility_and_a_curve_that_does_not_change_training(tmp_path):
    federation = {"rounds": 3, "local_steps": 2}
    plain = make_scenario(tmp_path, federation=federation)
    curved = make_scenario(tmp_path, federation={**federation, "utility_curve": True})
    values, _ = _values(execute(plain, 0))
    curved_values, extras = _values(execute(curved, 0))
    assert values["utility.accuracy"] == curved_values["utility.accuracy"]  # observing trains nothing
    assert values["utility.base.accuracy"] == curved_values["utility.base.accuracy"]
    assert "utility.curve.accuracy" not in values
    curve = extras["utility.curve.accuracy"]["curve"]
    assert [r for r, _ in curve] == [0, 1, 2, 3]
    assert curve[0][1] == values["utility.base.accuracy"] and curve[-1][1] == values["utility.accuracy"]


def _table4_cell(method: str, task: str) -> dict:
    """One Table 4 privacy cell without a defense, as scenarios/table4.yaml writes it, without its membership
    attacks (they do not change training; LiRA's shadows would triple the time)."""
    from bench.spec.scenario import load

    cells = [s for s in load("scenarios/table4.yaml") if s.method.name == method and s.task.name == task
             and not s.defenses]
    assert len(cells) == 1 and not cells[0].training_attacks
    return cells[0].without_attacks()


# The level (accuracy >= 0.8) is the 5-seed mean (lora 0.83, adapter 0.84; notes/h-regime2.md); one seed
# may fall a little short (lora seed 0: 0.78), so a single seed is checked at 0.75.
@pytest.mark.slow  # one seed of five Table 4 cells: ~5-6 CPU minutes (RLHF ~1.5 of them)
@pytest.mark.parametrize(("method", "task", "check"), [
    ("lora", "synthetic-clinical", lambda v: v["utility.accuracy"] >= 0.75 and v["utility.base.accuracy"] <= 0.45),
    ("adapter", "synthetic-clinical", lambda v: v["utility.accuracy"] >= 0.75 and v["utility.base.accuracy"] <= 0.45),
    # seed 0: 0.812 (seeds 0-2: 0.812, 0.805, 0.812; scenarios/studies/prompt-tuning-readout.yaml)
    ("prompt-tuning", "synthetic-clinical",
     lambda v: v["utility.accuracy"] >= 0.75 and v["utility.base.accuracy"] <= 0.45),
    ("instruction-tuning", "synthetic-instructions",
     lambda v: v["utility.rouge_l"] - v["utility.base.rouge_l"] >= 0.2),
    # the likelihood reward model on 260 pairs per client: 0.602-0.734 over seeds 0-4, mean 0.669; seed 0
    # is the lowest (0.602), so one seed is checked at 0.58 (scenarios/studies/rlhf-reward-model.yaml)
    ("rlhf", "synthetic-preferences",
     lambda v: 0.58 <= v["utility.reward_accuracy"] <= 0.95 and v["utility.implicit_reward_margin"] > 0),
])
def test_regime_levels(method, task, check):
    """Without a defense, the Table 4 regime learns each task beyond its base model (issue 15)."""
    values, _ = _values(execute(_table4_cell(method, task), 0))
    assert check(values), values


def test_the_leaderboard_publishes_the_base_utility_and_the_curve_of_the_headline():
    import json

    from bench.reporting import leaderboard

    base = {"scenario": "s", "scenario_hash": "h", "seed": 0, "tier": "open-weight", "model": "m", "task": "t",
            "method": "lora", "defenses": "none", "status": "ok", "error": "", "attack": "none", "extra": {}}
    rows = [{**base, "metric": "utility.accuracy", "value": 0.9},
            {**base, "metric": "utility.base.accuracy", "value": 0.3},
            {**base, "metric": "utility.curve.accuracy", "value": 0.9,
             "extra": json.dumps({"curve": [[0, 0.3], [1, 0.9]]})}]  # as read back from results.csv
    row = leaderboard.leaderboard_row(rows)
    assert row["utility_base"] == 0.3 and json.loads(row["utility_curve"]) == [[0, 0.3], [1, 0.9]]
    assert leaderboard.leaderboard_row(rows[:1])["utility_curve"] is None
