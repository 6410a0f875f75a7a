"""A run that went wrong is recorded as failed, with its reason, and never as a measurement.

Divergence, run-time input errors (a secure-aggregation abort, a data file gone), a task whose
template leaves no response token, and an inversion attack facing masked or encrypted updates; the
CLI's summary and exit code; a rerun retries the failed runs only.
"""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch
import yaml

import bench.engine.sweep as sweep_module
from attacks.inversion import dager
from attacks.inversion._common import as_float_update
from bench.api.errors import DivergedError, UserError
from bench.api.transcript import GroundTruth, Transcript
from bench.cli import main
from bench.engine import federation as fl
from bench.engine.runner import execute, plan, prepare
from bench.store.results import ResultStore, Row
from bench.world.tasks import SyntheticInstructions, truncation
from tests.helpers import make_scenario, scenario_dict

# The smallest federation that still trains: every run here takes a few seconds.
TINY = {"clients": 2, "clients_per_round": 2, "rounds": 1, "local_steps": 2, "batch_size": 4,
        "examples_per_client": 8, "eval_examples": 16}
CLINICAL = {"name": "synthetic-clinical", "params": {"num_classes": 3, "max_length": 24}}


def _tiny(**overrides):
    document = scenario_dict(task=CLINICAL, federation=TINY)
    for key, value in overrides.items():
        if key == "federation":
            document["federation"] = {**TINY, **value}
        else:
            document[key] = value
    return document


def _only_row(rows):
    assert len(rows) == 1, [(r.metric, r.status) for r in rows]
    return rows[0]


@pytest.mark.parametrize("method, optimizer, lr", [("fft", "sgd", 1e12), ("lora", "adam", 1e30)])
def test_a_diverging_run_fails_with_the_round_and_the_client(tmp_path, method, optimizer, lr):
    scenario = make_scenario(tmp_path, **_tiny(method=method, federation={"optimizer": optimizer, "lr": lr}))
    row = _only_row(execute(scenario, 0))
    assert row.status == "failed" and row.value is None
    assert "diverged in round 0: client " in row.error and "not finite" in row.error, row.error


def test_a_non_finite_aggregate_names_the_round():
    fl.check_finite(2, None, "aggregate", torch.ones(4))  # finite: nothing happens
    fl.check_finite(2, 1, "training loss", None)  # a trainer that reports no loss
    with pytest.raises(DivergedError, match=r"round 2: the aggregate is not finite \(1 of 3"):
        fl.check_finite(2, None, "aggregate", torch.tensor([0.0, float("inf"), 1.0]))
    with pytest.raises(DivergedError, match="client 1's training loss is not finite"):
        fl.check_finite(0, 1, "training loss", float("nan"))


@pytest.mark.parametrize("batches, fails", [([[]], False), ([[0]], True)])
def test_a_nan_loss_fails_the_run_unless_the_client_drew_no_example(tmp_path, batches, fails):
    # DP-SGD's Poisson batches may all be empty: that client reports a NaN loss it never computed.
    scenario = make_scenario(tmp_path, **_tiny())
    prepared = prepare(scenario, 0, plan(scenario))

    def untrained(job):
        job.seen.extend(batches)
        return {"loss": float("nan")}

    prepared.fed.trainer = untrained
    if fails:
        with pytest.raises(DivergedError, match="round 0: client 0's training loss is not finite"):
            fl.run(prepared.fed, Transcript(), GroundTruth())
    else:
        fl.run(prepared.fed, Transcript(), GroundTruth())


def test_a_secagg_abort_at_run_time_fails_the_run_and_does_not_raise(tmp_path):
    scenario = make_scenario(tmp_path, **_tiny(defenses=[{"name": "secagg", "params": {"dropout_rate": 1.0}}]))
    row = _only_row(execute(scenario, 0))  # today's code raised SecAggAbortError out of the sweep
    assert row.status == "failed" and "secagg round 0" in row.error, row.error


def test_a_data_file_gone_at_run_time_fails_the_run(tmp_path):
    path = tmp_path / "notes.csv"
    _write_notes(path)
    scenario = make_scenario(tmp_path, **_tiny(task=_local_task(path)))
    path.unlink()  # it was there when the scenario loaded
    row = _only_row(execute(scenario, 0))
    assert row.status == "failed" and f"data file {path} does not exist" in row.error and "task.params.path" in row.error


# --- truncation ------------------------------------------------------------------------------------


class WordTokenizer:
    """One token per whitespace-separated word; the eos marker joins the last word."""

    eos_token = "<eos>"

    def __call__(self, texts):
        return type("Encoding", (), {"input_ids": [t.split() for t in texts]})()


def _pair(instruction_words: int, response_words: int) -> dict[str, str]:
    return {"instruction": " ".join(["ask"] * instruction_words), "response": " ".join(["say"] * response_words)}


def test_truncated_fraction_counts_records_cut_short():
    # "### Instruction:\n{i}\n### Response:\n" is 4 words + the instruction's; eos joins the last word.
    task = SyntheticInstructions(SyntheticInstructions.Config(max_length=10))
    records = [_pair(2, 3), _pair(2, 6), _pair(5, 1)]  # 9, 12 and 10 tokens: only the second is cut
    assert truncation(task, records, WordTokenizer()) == pytest.approx(1 / 3)
    assert truncation(task, [_pair(2, 3)], WordTokenizer()) == 0.0


def test_a_prompt_that_fills_max_length_is_an_error_naming_task_key_and_length():
    task = SyntheticInstructions(SyntheticInstructions.Config(max_length=10))
    with pytest.raises(UserError) as error:
        truncation(task, [_pair(2, 3), _pair(6, 2), _pair(9, 3)], WordTokenizer())  # 10- and 13-token prompts
    message = str(error.value)
    assert "synthetic-instructions" in message and "task.params.max_length" in message
    # The count is of prompts at or over the limit, and the longest of them sets the length needed.
    assert "2 of 3 sequences have a prompt of 10 tokens or more (the longest 13)" in message, message
    assert "at least 14" in message and "16 keeps every record whole" in message


def test_an_instruction_task_whose_template_fills_max_length_fails_instead_of_reporting_perplexity_one(tmp_path):
    task = {"name": "synthetic-instructions", "params": {"max_length": 8}}
    scenario = make_scenario(tmp_path, **_tiny(task=task, method="instruction-tuning", attacks=["mia-loss"]))
    row = _only_row(execute(scenario, 0))
    assert row.status == "failed" and "synthetic-instructions" in row.error and "max_length" in row.error, row.error


# --- inversion under transports that hide updates ---------------------------------------------------


def test_masked_or_encrypted_messages_are_not_updates():
    assert as_float_update(torch.arange(6, dtype=torch.int64), 6) is None  # secagg's masked integers
    assert as_float_update(b"ciphertext", 6) is None
    assert as_float_update(torch.tensor([1.0, float("nan")]), 2) is None
    assert torch.equal(as_float_update(torch.ones(2, 3, dtype=torch.float64), 6), torch.ones(6))


@pytest.mark.parametrize("transport", ["secagg", "he"])
def test_dager_reports_an_empty_reconstruction_under_a_hiding_transport(tmp_path, monkeypatch, transport):
    def never(*args, **kwargs):
        raise AssertionError("DAGER ran its linear algebra on a message that is not an update")

    monkeypatch.setattr(dager.Dager, "invert", never, raising=False)
    fedsgd = {"local_steps": 1, "optimizer": "sgd", "lr": 0.1, "batch_size": 2, "examples_per_client": 4}
    attack = {"name": "inversion-dager", "params": {"rounds": [0], "max_clients": 1}}
    scenario = make_scenario(tmp_path, **_tiny(federation=fedsgd, defenses=[transport], attacks=[attack]))
    rows = [r for r in execute(scenario, 0) if r.attack == "inversion-dager"]
    assert rows and all(r.status == "ok" for r in rows), [(r.status, r.error) for r in rows]
    assert {r.metric: r.value for r in rows}["inversion.exact"] == 0.0


# --- the command line: summary, exit code, retries ---------------------------------------------------


def _write_notes(path):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([f"patient {i} has condition {i % 2}", str(i % 2)] for i in range(40))


def _local_task(path):
    return {"name": "local-file", "params": {"path": str(path), "max_length": 24}}


def _grid(tmp_path):
    """Five cells: one fine, three that go wrong at run time, one the tier rules out."""
    cells = {
        "fine": _tiny(),
        "diverges": _tiny(method="fft", federation={"optimizer": "sgd", "lr": 1e12}),
        "missing-data": _tiny(task=_local_task(tmp_path / "notes.csv")),
        "secagg-dropout": _tiny(defenses=[{"name": "secagg", "params": {"dropout_rate": 1.0}}]),
        "ruled-out": _tiny(tier="black-box", method="fft"),
    }
    directory = tmp_path / "grid"
    directory.mkdir()
    for name, document in cells.items():
        (directory / f"{name}.yaml").write_text(yaml.safe_dump({**document, "name": name}))
    return directory


def test_run_summarises_failures_exits_1_and_a_rerun_retries_only_them(tmp_path, monkeypatch, capsys):
    grid, out, data = _grid(tmp_path), tmp_path / "out", tmp_path / "notes.csv"
    _write_notes(data)
    executed: list[str] = []
    vanishing = [True]
    real = sweep_module.execute

    def recording(scenario, seed, **kwargs):
        executed.append(scenario.name)
        if scenario.name == "missing-data" and vanishing[0]:
            data.unlink()  # the file vanishes between loading and running
        return real(scenario, seed, **kwargs)

    monkeypatch.setattr(sweep_module, "execute", recording)
    assert main(["run", str(grid), "--out", str(out), "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "runs: 1 ok, 3 failed, 1 incompatible" in printed, printed
    for line in ("diverges seed 0: bench.api.errors.DivergedError: diverged in round 0", "missing-data seed 0: ",
                 "secagg-dropout seed 0: "):
        assert line in printed, printed
    assert "does not exist" in printed and "secagg" in printed.split("secagg-dropout seed 0: ")[1]
    rows = ResultStore(out).rows()  # the log holds one record per run: read it through the store
    statuses = {r["scenario"]: r["status"] for r in rows if r["metric"] in ("run", "utility.accuracy")}
    assert statuses == {"fine": "ok", "diverges": "failed", "missing-data": "failed", "secagg-dropout": "failed",
                        "ruled-out": "incompatible"}
    assert any(r["scenario"] == "fine" and r["metric"] == "data.truncated_fraction" for r in rows)

    vanishing[0] = False
    _write_notes(data)  # the data is back: the retry of that cell succeeds, the other two fail again
    executed.clear()
    assert main(["run", str(grid), "--out", str(out), "--quiet"]) == 1
    assert sorted(executed) == ["diverges", "missing-data", "secagg-dropout"]
    assert "runs: 2 ok, 2 failed, 1 incompatible" in capsys.readouterr().out


def test_run_exits_0_when_every_run_is_ok_or_incompatible(tmp_path, capsys):
    grid = tmp_path / "grid"
    grid.mkdir()
    (grid / "ruled-out.yaml").write_text(yaml.safe_dump({**_tiny(tier="black-box", method="fft"), "name": "ruled-out"}))
    assert main(["run", str(grid), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "runs: 0 ok, 0 failed, 1 incompatible" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "absent.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 2


def _store_row(seed, status="ok", attack="none", metric="utility.accuracy", error=""):
    return Row(run_id=f"h-{seed}", scenario="s", scenario_hash="h", seed=seed, tier="open-weight", model="m", task="t",
               method="lora", defenses="none", attack=attack, metric=metric, value=None if error else 0.5,
               status=status, error=error)


def test_only_finished_runs_are_skipped_and_the_summary_lists_each_failure(tmp_path):
    store = ResultStore(tmp_path)
    store.append([_store_row(0), _store_row(0, "failed", "mia-loss", "run", "ValueError: boom")])
    store.append([_store_row(1)])
    store.append([_store_row(2, "failed", metric="run", error="diverged in round 1: client 0's update is not finite")])
    store.append([_store_row(3, "incompatible", metric="run", error="fft needs weights")])
    assert store.done() == {("h", 1), ("h", 3)}  # what a rerun skips: seed 0's attack failed, seed 2 failed
    scenario = SimpleNamespace(hash="h", name="s")
    summary = sweep_module.summarize(store, [(scenario, seed) for seed in range(4)])
    assert summary.counts == {"ok": 1, "failed": 2, "incompatible": 1}
    assert summary.failed == ["s seed 0: attack mia-loss: ValueError: boom",
                              "s seed 2: diverged in round 1: client 0's update is not finite"]
