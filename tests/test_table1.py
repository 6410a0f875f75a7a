"""Table 1: computed from needs and grants, written as CSV and Markdown, and executable cell by cell."""

from __future__ import annotations

import csv

import pytest

from bench.api.access import Access
from bench.api.registry import METHODS, TIERS
from bench.engine import federation as fl
from bench.engine.runner import availability, execute
from bench.reporting import table1
from tests.helpers import make_scenario

TASKS = {
    "classification": {"name": "synthetic-clinical", "params": {"num_classes": 3, "max_length": 32}},
    "instruction": {"name": "synthetic-instructions", "params": {"max_length": 40}},
    "preference": {"name": "synthetic-preferences", "params": {"max_length": 40}},
}
ONE_ROUND = {"clients": 2, "clients_per_round": 2, "rounds": 1, "local_steps": 1, "batch_size": 2,
             "examples_per_client": 4, "eval_examples": 4}


def instance(registry, name):
    cls = registry.get(name)
    return cls(cls.Config())


def test_write_table1_writes_every_cell_from_needs_and_grants(tmp_path):
    csv_path, md_path = table1.write_table1(tmp_path / "out")
    rows = list(csv.DictReader(csv_path.open()))
    assert {(r["tier"], r["method"]) for r in rows} == {(t, m) for t in TIERS.names() for m in METHODS.names()}
    for row in rows:
        reason = availability(instance(TIERS, row["tier"]), instance(METHODS, row["method"]))
        assert row["allowed"] == ("no" if reason else "yes") and row["reason"] == (reason or "")
    markdown = md_path.read_text()
    assert all(f"| {m} |" in markdown for m in METHODS.names())
    assert "gray-box / fft: fft needs gradients, weights access, which gray-box does not grant" in markdown


def test_table1_follows_the_declared_needs(monkeypatch):
    cell = {(c.tier, c.method): c for c in table1.table1_cells()}[("black-box", "textual-prompt")]
    assert cell.allowed and cell.comparison == "agree"
    monkeypatch.setattr(METHODS.get("textual-prompt"), "needs", frozenset({Access.LOGITS}))
    cell = {(c.tier, c.method): c for c in table1.table1_cells()}[("black-box", "textual-prompt")]
    assert not cell.allowed and "logits" in cell.reason and cell.comparison == "disagree"


def test_table1_agrees_with_every_mark_the_paper_states():
    cells = table1.table1_cells()
    stated = [c for c in cells if c.paper in ("yes", "no", "partial")]
    assert stated and all(c.comparison.startswith("agree") for c in stated), [
        (c.tier, c.method) for c in stated if not c.comparison.startswith("agree")]
    marks = {(c.tier, c.method): c.paper for c in cells}
    assert marks["black-box", "fft"] == marks["black-box", "rlhf"] == "no"
    assert marks["gray-box", "lora"] == marks["gray-box", "adapter"] == "partial"
    assert all(marks[t, m] == "yes" for t in ("open-source", "open-weight") for m in ("fft", "rlhf", "prompt-tuning"))


def cell_scenario(tmp_path, tier: str, method: str):
    kinds = METHODS.get(method).task_kinds
    kind = next(k for k in ("classification", "instruction", "preference") if k in kinds)
    return make_scenario(tmp_path, tier=tier, method=method, task=TASKS[kind], federation=ONE_ROUND)


@pytest.mark.parametrize("tier", ["open-source", "open-weight", "gray-box", "black-box"])
def test_every_allowed_cell_trains_a_round_and_every_other_fails_before_training(tmp_path, monkeypatch, tier):
    trained = []
    real_run = fl.run
    monkeypatch.setattr(fl, "run", lambda fed, *a: trained.append(fed.method.name) or real_run(fed, *a))
    for cell in (c for c in table1.table1_cells() if c.tier == tier):
        rows = execute(cell_scenario(tmp_path, tier, cell.method), 0)
        status = {r.status for r in rows}
        if cell.allowed:
            assert status == {"ok"}, (cell.method, rows[0].error)
            assert trained[-1] == cell.method
            egress = {r.metric: r.value for r in rows}["privacy.egress_records"]
            assert (egress > 0) == TIERS.get(tier).hosted, (cell.method, egress)
        else:
            assert status == {"incompatible"} and rows[0].error == cell.reason
            assert cell.method not in trained  # refused before any training
            assert "does not grant" in rows[0].error and tier in rows[0].error
