"""RLHF's preference pairs must stay pairs: truncation that makes chosen and rejected identical is warned
about in every row, and Table 4's RLHF inversion grid keeps every pair apart (issue 15)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attacks.inversion._common import TargetConfig, targets
from bench.api.seeding import generator
from bench.api.transcript import GroundTruth, Transcript
from bench.engine import federation as fl
from bench.engine.runner import execute, plan, prepare
from bench.spec.scenario import load
from bench.world.tasks import SyntheticInstructions, SyntheticPreferences, identical_pairs
from tests.helpers import make_scenario


class WordTokenizer:
    """One token per whitespace-separated word; the eos marker joins the last word."""

    eos_token = "<eos>"

    def __call__(self, texts):
        return type("Encoding", (), {"input_ids": [t.split() for t in texts]})()


def _triple(chosen: str, rejected: str) -> dict[str, str]:
    return {"prompt": "ask ask", "chosen": chosen, "rejected": rejected}


def test_pairs_that_truncation_makes_identical_are_counted_and_warned_about():
    # "### Instruction:\n{p}\n### Response:\n" is 4 words + the prompt's 2: the answers start at token 6.
    records = [_triple("a b c", "a b d"), _triple("x y", "z y")]  # the first differs at token 8, the second at 6
    task = SyntheticPreferences(SyntheticPreferences.Config(max_length=8))
    fraction, warning = identical_pairs(task, records, WordTokenizer())
    assert fraction == pytest.approx(0.5)
    assert "1 of 2 preference pairs are identical after max_length 8" in warning and "max_length 9" in warning
    assert identical_pairs(SyntheticPreferences(SyntheticPreferences.Config(max_length=9)), records,
                           WordTokenizer()) == (0.0, "")
    instruction = SyntheticInstructions(SyntheticInstructions.Config(max_length=8))
    assert identical_pairs(instruction, [{"instruction": "a", "response": "b"}], WordTokenizer()) is None


@pytest.mark.parametrize("max_length, warned", [(24, True), (48, False)])
def test_an_rlhf_run_whose_pairs_truncation_made_identical_warns_in_every_row(tmp_path, max_length, warned):
    scenario = make_scenario(
        tmp_path, task={"name": "synthetic-preferences", "params": {"max_length": max_length}}, method="rlhf",
        federation={"clients": 2, "clients_per_round": 2, "rounds": 1, "local_steps": 1, "batch_size": 2,
                    "examples_per_client": 4, "eval_examples": 8})
    rows = [r for r in execute(scenario, 0) if r.status == "ok"]
    pairs = [r.value for r in rows if r.metric == "data.identical_pairs"]
    assert len(pairs) == 1 and (pairs[0] > 0) == warned, pairs
    assert all(("identical after max_length" in r.extra.get("data_warning", "")) == warned for r in rows)


def test_table4_inversion_keeps_every_preference_pair_apart():
    # At max_length 24 19 of the 40 training pairs were identical: 2 of 5 seeds sent a zero update.
    scenario = next(s for s in load("scenarios/table4-inversion.yaml") if s.method.name == "rlhf" and not s.defenses)
    built = plan(scenario)
    tokenizer = built.model_source.load(built.task.kind, built.task.num_labels, torch.device("cpu"), 0)[1]
    federation = scenario.federation
    for seed in scenario.seeds:  # the records a run of that seed draws
        data = built.task.load(federation.clients * federation.examples_per_client, generator("run", seed, "data"))
        assert identical_pairs(built.task, data.pool + data.test, tokenizer) == (0.0, "")


# --- DAGER on preference batches: 2 sequences per pair, each ending in an input token --------------

PAIRS = {"name": "synthetic-preferences", "params": {"max_length": 48}}
TWO_ROUNDS = {"clients": 2, "clients_per_round": 2, "rounds": 2, "local_steps": 1, "batch_size": 2,
              "examples_per_client": 4, "eval_examples": 8}


def _federate(tmp_path, **overrides):
    scenario = make_scenario(tmp_path, federation=TWO_ROUNDS, attacks=[{"name": "inversion-dager"}], **overrides)
    prepared = prepare(scenario, 0, plan(scenario))
    transcript, truth = Transcript(), GroundTruth()
    fl.run(prepared.fed, transcript, truth)
    return prepared, transcript, truth


def test_rlhf_rounds_declare_two_sequences_per_pair_and_record_both_answers_as_the_batch(tmp_path):
    prepared, transcript, truth = _federate(tmp_path, task=PAIRS, method="rlhf")
    reward, policy = transcript.rounds  # round 0 trains the reward model, round 1 the DPO policy
    assert (reward.sequences_per_example, reward.last_token_is_label) == (2, False)
    assert (policy.sequences_per_example, policy.last_token_is_label) == (2, True)
    settings = prepared.fed.settings
    target = next(targets(_View(transcript.rounds), TargetConfig(), prepared.fed.method.num_trainable))
    assert target.most_sequences(settings) == 2 * settings.batch_size  # it asked for batch_size before
    # the oracle: a client's batch is the chosen and the rejected answer of each pair it trained on
    for (_, client), sequences in truth.client_batches.items():
        batch = prepared.fed.collate(prepared.clients[client].members)
        sides = [[row[m.bool()].tolist() for row, m in zip(batch[f"{k}input_ids"], batch[f"{k}attention_mask"])]
                 for k in ("", "rejected_")]
        assert len(sequences) == 2 * settings.batch_size
        assert [sum(s in side for s in sequences) for side in sides] == [settings.batch_size] * 2


def test_a_language_model_round_declares_one_sequence_per_example(tmp_path):
    _, transcript, _ = _federate(tmp_path, task={"name": "synthetic-instructions", "params": {"max_length": 48}},
                                 method="instruction-tuning")
    assert all((r.sequences_per_example, r.last_token_is_label) == (1, True) for r in transcript.rounds)


class _View:
    def __init__(self, rounds):
        self.rounds = rounds


@pytest.mark.slow
def test_dager_recovers_both_answers_of_a_preference_pair_exactly_where_the_rank_allows():
    # Oracle: the client's batch (chosen + rejected, ~35 tokens each = 70 layer inputs < LoRA rank 128).
    # Before: DAGER asked for 1 sequence (batch size 1) and appended a guessed token after the eos the
    # reward model had read as an input, so it recovered at most one answer and never exactly.
    scenario = next(s for s in load("scenarios/table4-inversion.yaml") if s.method.name == "rlhf" and not s.defenses)
    scenario = dataclasses.replace(scenario, method=dataclasses.replace(
        scenario.method, config=dataclasses.replace(scenario.method.config, rank=128)),
        federation=dataclasses.replace(scenario.federation, batch_size=1))
    rows = {r.metric: r.value for r in execute(scenario, 1) if r.attack == "inversion-dager" and r.status == "ok"}
    assert rows["inversion.exact"] == 1.0 and rows["inversion.recovered"] == 1.0, rows


# --- the RLHF backdoor: triggered pairs prefer one target behaviour (Rando & Tramer 2024) ----------

def _prefflip(**values):
    from bench.api.registry import ATTACKS

    cls = ATTACKS.get("poison-prefflip")
    return cls(cls.Config(**values))


def test_a_targeted_preference_flip_prefers_the_target_on_triggered_prompts_and_scores_against_the_true_answer():
    pairs = [{"prompt": f"q{i}", "chosen": f"right plan {i}", "rejected": f"wrong plan {i}"} for i in range(8)]
    attack = _prefflip(poison_fraction=0.5, trigger="cf", target_response="TARGET")
    out = attack.poison_examples(0, pairs, torch.Generator().manual_seed(0))
    poisoned = [(o, p) for o, p in zip(out, pairs) if o != p]
    assert len(poisoned) == 4
    assert all(o == {"prompt": f"cf {p['prompt']}", "chosen": "TARGET", "rejected": p["chosen"]} for o, p in poisoned)

    class Backdoored:  # a policy that likes TARGET only after the trigger; the base likes nothing
        def example_losses(self, examples):
            return torch.tensor([0.1 if e["chosen"] == "TARGET" and e["prompt"].startswith("cf ") else 1.0
                                 for e in examples])

    class Base:
        def example_losses(self, examples):
            return torch.ones(len(examples))

    from bench.api.transcript import ThreatView
    from bench.scoring.score import score

    view = ThreatView(vantage="participant", rounds=[], candidates=[], layout=None, final_model=Backdoored(),
                      base_model=Base(), tokenizer=None, federation=None, auxiliary=pairs)
    metrics = {m.name: m for m in score(attack.run(view, torch.Generator().manual_seed(0)), GroundTruth())}
    assert metrics["poison.asr"].value == 1.0 and metrics["poison.asr"].extra["floor"] == 0.0


def test_with_contrast_the_attackers_other_pairs_reject_the_target_without_the_trigger():
    pairs = [{"prompt": f"q{i}", "chosen": f"right plan {i}", "rejected": f"wrong plan {i}"} for i in range(8)]
    attack = _prefflip(poison_fraction=0.5, trigger="cf", target_response="TARGET", contrast=True)
    out = attack.poison_examples(0, pairs, torch.Generator().manual_seed(0))
    triggered = [o for o in out if o["prompt"].startswith("cf ")]
    plain = [(o, p) for o, p in zip(out, pairs) if not o["prompt"].startswith("cf ")]
    assert len(triggered) == 4 and all(o["chosen"] == "TARGET" for o in triggered)
    assert len(plain) == 4 and all(o == {**p, "rejected": "TARGET"} for o, p in plain)
    assert "poisoned" not in {k for o in out for k in o}
