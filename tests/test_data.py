"""Preference and instruction data: records, response-only labels, local files; utility metrics."""

from __future__ import annotations

import json

import pytest
import torch

from bench.data import PROMPT_TEMPLATE
from bench.errors import UserError
from bench.evaluate import EVALUATORS, rouge_l
from bench.registry import MODELS, TASKS
from tests.helpers import make_scenario


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODELS.get("tiny-gpt2")(MODELS.get("tiny-gpt2").Config()).path())


def task(name: str, **params):
    cls = TASKS.get(name)
    return cls(cls.Config(**params))


def test_synthetic_preferences_are_seeded_triples():
    prefs = task("synthetic-preferences")
    first = prefs.load(6, torch.Generator().manual_seed(1))
    again = prefs.load(6, torch.Generator().manual_seed(1))
    assert first.pool == again.pool and len(first.pool) == 6 and prefs.kind == "preference"
    assert all(set(e) == {"prompt", "chosen", "rejected"} and e["chosen"] != e["rejected"] for e in first.pool)
    text = prefs.text_of(first.pool[0])
    assert all(first.pool[0][k] in text for k in ("prompt", "chosen", "rejected"))


def test_preference_batches_label_only_the_responses(tokenizer):
    prefs = task("synthetic-preferences", max_length=64)
    examples = [{"prompt": "Where does Ana live?", "chosen": "Ana lives in Oslo.", "rejected": "No idea."},
                {"prompt": "Write a short note about a garden.", "chosen": "Here is a note.", "rejected": "No."}]
    batch = prefs.collate(examples, tokenizer, "cpu")
    for prefix, key in (("", "chosen"), ("rejected_", "rejected")):
        ids, labels = batch[f"{prefix}input_ids"], batch[f"{prefix}labels"]
        assert ids.shape[0] == 2
        for row, example in enumerate(examples):
            prompt_len = len(tokenizer(PROMPT_TEMPLATE.format(instruction=example["prompt"])).input_ids)
            assert (labels[row, :prompt_len] == -100).all()
            scored = ids[row][labels[row] != -100]
            assert tokenizer.decode(scored) == example[key] + tokenizer.eos_token


def test_local_files_give_preference_and_instruction_records(tmp_path):
    pairs = tmp_path / "prefs.jsonl"
    pairs.write_text("\n".join(json.dumps({"q": f"question {i}", "good": f"yes {i}", "bad": f"no {i}"}) for i in range(20)))
    prefs = task("local-file", path=str(pairs), objective="preference", prompt_column="q", chosen_column="good",
                 rejected_column="bad")
    data = prefs.load(100, torch.Generator().manual_seed(0))
    assert prefs.kind == "preference" and len(data.pool) + len(data.test) + len(data.auxiliary) == 20
    assert all(e["chosen"].startswith("yes") and e["rejected"].startswith("no") for e in data.pool)

    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Add", "input": "2 and 3", "output": "5"}] * 10))
    instructions = task("local-file", path=str(alpaca), objective="instruction")
    record = instructions.load(5, torch.Generator().manual_seed(0)).pool[0]
    assert record == {"instruction": "Add\n2 and 3", "response": "5"}
    assert instructions.num_labels == prefs.num_labels == 0  # no label column needed


def test_unknown_local_objective_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="objective must be one of"):
        make_scenario(tmp_path, task={"name": "local-file", "params": {"path": "x.csv", "objective": "ranking"}})


def test_rouge_l_oracle():
    assert rouge_l(["ana lives in oslo"], ["ana lives in oslo"]) == pytest.approx(1.0)
    assert rouge_l(["completely different words"], ["ana lives in oslo"]) == 0.0
    # LCS "ana in oslo" (3 of 4 reference tokens, 3 of 3 generated): F1 = 2 * 1 * 0.75 / 1.75
    assert rouge_l(["ana in oslo"], ["ana lives in oslo"]) == pytest.approx(2 * 0.75 / 1.75)


def test_preference_utility_counts_pairs_where_the_chosen_response_is_likelier():
    class Handle:  # the loss of an example is the length of its chosen response
        def example_losses(self, examples):
            return torch.tensor([float(len(e["chosen"])) for e in examples])

    pairs = [{"prompt": "p", "chosen": "aa", "rejected": "bbbb"}, {"prompt": "p", "chosen": "cccc", "rejected": "d"}]
    metrics = {m.name: m.value for m in EVALUATORS["preference"](Handle(), None, pairs)}
    assert metrics["utility.likelihood_preference_accuracy"] == 0.5
    assert metrics["utility.perplexity"] == pytest.approx(float(torch.tensor(3.0).exp()))


def test_a_dataset_saved_to_disk_loads_through_the_hf_dataset_task(tmp_path):
    import datasets

    from bench.runner import execute
    from tests.helpers import make_scenario

    records = [{"note": f"Patient {i} has {'a cough' if i % 2 else 'chest pain'}.", "condition": i % 2} for i in range(80)]
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    task = {"name": "hf-dataset", "params": {"path": str(tmp_path / "ds"), "text_column": "note",
                                            "label_column": "condition", "max_length": 24}}
    scenario = make_scenario(tmp_path, task=task, federation={"rounds": 1, "local_steps": 1, "examples_per_client": 8})
    rows = execute(scenario, 0)
    assert {r.status for r in rows} == {"ok"}, [r.error for r in rows]
    assert "utility.accuracy" in {r.metric for r in rows}
