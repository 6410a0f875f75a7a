"""RLHF's preference pairs must stay pairs: truncation that makes chosen and rejected identical is warned
about in every row, and Table 4's RLHF inversion grid keeps every pair apart (issue 15)."""

from __future__ import annotations

import pytest
import torch

from bench.api.seeding import generator
from bench.engine.runner import execute, plan
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
