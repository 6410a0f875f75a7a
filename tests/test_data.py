"""Preference and instruction data: records, response-only labels, local files; utility metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.api.errors import UserError
from bench.api.registry import MODELS, TASKS
from bench.api.vocabulary import PROMPT_TEMPLATE
from bench.scoring.utility import EVALUATORS, rouge_l
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

    from bench.engine.runner import execute
    from tests.helpers import make_scenario

    records = [{"note": f"Patient {i} has {'a cough' if i % 2 else 'chest pain'}.", "condition": i % 2} for i in range(80)]
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    task = {"name": "hf-dataset", "params": {"path": str(tmp_path / "ds"), "text_column": "note",
                                            "label_column": "condition", "max_length": 24}}
    scenario = make_scenario(tmp_path, task=task, federation={"rounds": 1, "local_steps": 1, "examples_per_client": 8})
    rows = execute(scenario, 0)
    assert {r.status for r in rows} == {"ok"}, [r.error for r in rows]
    assert "utility.accuracy" in {r.metric for r in rows}


# --- local files on real-looking data ---------------------------------------------------------------

def _sorted_csv(path, n=100):
    """A CSV sorted by label: the first half is all 'a', the second all 'b'."""
    path.write_text("text,label\n" + "".join(f"note {i},{'a' if i < n // 2 else 'b'}\n" for i in range(n)))
    return path


def _all_records(data):
    return data.pool + data.test + data.auxiliary


def test_limit_samples_after_shuffling_with_the_seed(tmp_path):
    local = task("local-file", path=str(_sorted_csv(tmp_path / "sorted.csv")), limit=20)
    first = local.load(100, torch.Generator().manual_seed(0))
    records = _all_records(first)
    assert len(records) == 20
    assert {r["label"] for r in records} == {0, 1}  # the first 20 rows are all 'a'
    again = _all_records(local.load(100, torch.Generator().manual_seed(0)))
    other = _all_records(local.load(100, torch.Generator().manual_seed(1)))
    assert records == again and {r["text"] for r in records} != {r["text"] for r in other}
    assert local.num_labels == 2


def test_a_classification_task_needs_two_labels(tmp_path):
    one = tmp_path / "one.csv"
    one.write_text("text,label\n" + "".join(f"note {i},a\n" for i in range(20)))
    local = task("local-file", path=str(one))
    with pytest.raises(UserError, match="at least 2") as error:
        local.check()
    assert error.value.key == "task.params.label_column"
    with pytest.raises(UserError, match="at least 2"):
        local.load(100, torch.Generator().manual_seed(0))


def test_a_sample_with_one_label_is_refused_at_load(tmp_path):
    path = tmp_path / "rare.csv"  # 'b' is one row in 200: a sample of 2 is almost surely one-class
    path.write_text("text,label\n" + "".join(f"note {i},{'b' if i == 0 else 'a'}\n" for i in range(200)))
    local = task("local-file", path=str(path), limit=2)
    assert local.check() == []  # the file holds two labels
    with pytest.raises(UserError, match="the records drawn hold 1 label"):
        local.load(10, torch.Generator().manual_seed(0))


def test_rows_with_an_empty_field_are_skipped_and_counted(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("text,label\n" + "".join(f"{'' if i % 5 == 0 else f'note {i}'},{i % 2}\n" for i in range(50)))
    local = task("local-file", path=str(path), objective="language")
    assert local.check() == ["10 of 50 rows lack a value for text and will be skipped"]
    with pytest.warns(UserWarning, match="10 of 50 rows"):
        data = local.load(100, torch.Generator().manual_seed(0))
    records = _all_records(data)
    assert len(records) == 40 and all(r["text"] and local.text_of(r) == r["text"] for r in records)
    assert task("synthetic-clinical").text_of({"text": ""}) == ""  # was KeyError: 'instruction'


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".json.gz", ".csv.gz"])
def test_gzipped_files_are_read(tmp_path, suffix):
    import gzip

    rows = [{"text": f"note {i}", "label": str(i % 2)} for i in range(20)]
    if suffix == ".jsonl.gz":
        body = "\n".join(json.dumps(r) for r in rows)
    elif suffix == ".json.gz":
        body = json.dumps(rows)
    else:
        body = "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows)
    path = tmp_path / f"data{suffix}"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(body)
    local = task("local-file", path=str(path))
    assert local.check() == []
    assert sorted(r["text"] for r in _all_records(local.load(100, torch.Generator().manual_seed(0)))) == \
        sorted(r["text"] for r in rows)


def test_relative_data_paths_resolve_from_the_scenario_folder(tmp_path, monkeypatch):
    folder = tmp_path / "study"
    folder.mkdir()
    _sorted_csv(folder / "data.csv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    scenario = make_scenario(folder, task={"name": "local-file", "params": {"path": "data.csv", "max_length": 32}})
    assert Path(scenario.task.config.path).resolve() == (folder / "data.csv").resolve()
    assert scenario.task.params["path"] == "data.csv"  # the file's text (and so its hash) is unchanged


def test_a_path_found_only_from_the_working_directory_still_loads_with_a_warning(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "scenarios"
    folder.mkdir()
    _sorted_csv(tmp_path / "data.csv")
    monkeypatch.chdir(tmp_path)
    scenario = make_scenario(folder, task={"name": "local-file", "params": {"path": "data.csv", "max_length": 32}})
    assert scenario.task.config.path == "data.csv"
    assert "resolved from the scenario file's folder, so write ../data.csv" in capsys.readouterr().err


def test_hf_model_paths_are_checked_only_when_local(tmp_path):
    from bench.spec.scenario import looks_local

    hf = MODELS.get("hf")
    assert not looks_local("Qwen/Qwen2.5-0.5B") and not looks_local("gpt2")
    assert looks_local("./model") and looks_local("/abs/model") and looks_local("a/b/c")
    hf(hf.Config(path="Qwen/Qwen2.5-0.5B")).check()  # a hub name cannot be checked offline: accepted
    with pytest.raises(UserError, match="does not exist") as error:
        hf(hf.Config(path=str(tmp_path / "missing"))).check()
    assert error.value.key == "model.params.path"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"n_positions": 64}))
    assert hf(hf.Config(path=str(tmp_path / "model"))).context_length() == 64


def test_max_length_beyond_the_model_context_is_refused(tmp_path):
    from bench.spec.scenario import check

    fits = make_scenario(tmp_path, task={"name": "synthetic-clinical", "params": {"max_length": 128}})
    assert check(fits) == []
    too_long = make_scenario(tmp_path, task={"name": "synthetic-clinical", "params": {"max_length": 256}})
    with pytest.raises(UserError, match=r"exceeds the context of model tiny-gpt2 \(128 positions\)") as error:
        check(too_long)
    assert error.value.key == "task.params.max_length" and error.value.file == too_long.file
