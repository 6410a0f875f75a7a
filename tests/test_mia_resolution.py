"""Membership candidate sets that resolve a low false-positive rate, and rows that say what they resolve."""

from __future__ import annotations

import pytest
import torch

from bench.api.predictions import MembershipScores
from bench.api.seeding import generator
from bench.api.transcript import GroundTruth
from bench.engine import federation as fl
from bench.engine.runner import execute, plan, prepare
from bench.engine.views import ViewBuilder
from bench.scoring.mia import resolution, score_membership
from bench.scoring.score import score
from tests.helpers import make_scenario


def test_every_membership_metric_row_states_the_candidates_and_the_finest_fpr():
    flags = torch.tensor([1] * 20 + [0] * 400)
    truth = GroundTruth(malicious_clients=(), canaries=[])
    truth.member_flags = flags
    metrics = score_membership(MembershipScores(scores=torch.randn(420, generator=torch.Generator().manual_seed(0))),
                               truth)
    for m in metrics:
        assert m.extra["members"] == 20 and m.extra["nonmembers"] == 400
        assert m.extra["fpr_resolution"] == pytest.approx(1 / 400)
        assert m.extra["resolved_fprs"] == [0.01]  # 0.1% of 400 non-members is less than one false positive


def test_a_thousand_nonmembers_resolve_one_in_a_thousand():
    counts = resolution(torch.tensor([1] * 64 + [0] * 1000))
    assert counts["resolved_fprs"] == [0.001, 0.01] and counts["tpr_resolution"] == pytest.approx(1 / 64)


def _builder(prepared, **kwargs):
    return ViewBuilder(prepared.scenario, prepared.seed, prepared.built, prepared.transcript, prepared.tokenizer,
                       prepared.clients, prepared.task_data, prepared.truth, **kwargs)


def test_mia_nonmembers_scores_every_member_against_many_nonmembers(tmp_path):
    # 3 clients x 40 records, 10% members: 12 members and 108 never-trained records
    scenario = make_scenario(tmp_path, federation={"rounds": 1, "local_steps": 1, "examples_per_client": 40,
                                                   "member_fraction": 0.1, "mia_nonmembers": 100})
    prepared = prepare(scenario, 0, plan(scenario))
    builder = _builder(prepared, max_candidates=None)
    flags = prepared.truth.member_flags
    assert int(flags.sum()) == 12 and int((flags == 0).sum()) == 100
    members = {c["text"] for client in prepared.clients for c in client.members}
    drawn_members = {c["text"] for c, f in zip(builder.candidates, flags.tolist(), strict=True) if f}
    drawn_non = {c["text"] for c, f in zip(builder.candidates, flags.tolist(), strict=True) if not f}
    assert drawn_members == members and not drawn_non & members  # a non-member was never trained on


def test_without_mia_nonmembers_the_draw_stays_balanced(tmp_path):
    scenario = make_scenario(tmp_path, federation={"rounds": 1, "local_steps": 1, "examples_per_client": 40,
                                                   "member_fraction": 0.1})
    prepared = prepare(scenario, 0, plan(scenario))
    _builder(prepared, max_candidates=None)
    assert prepared.truth.member_flags.tolist().count(0) == prepared.truth.member_flags.tolist().count(1) == 12


def test_a_run_row_carries_the_resolution(tmp_path):
    scenario = make_scenario(tmp_path, attacks=["mia-loss"],
                             federation={"rounds": 1, "local_steps": 1, "examples_per_client": 40,
                                         "member_fraction": 0.1, "mia_candidates": 0, "mia_nonmembers": 100})
    rows = {r.metric: r for r in execute(scenario, 0) if r.attack == "mia-loss"}
    assert rows["mia.tpr@0.01"].extra["nonmembers"] == 100 and rows["mia.auc"].extra["members"] == 12
    assert "roc" in rows["mia.auc"].extra  # the ROC points are kept beside the counts


@pytest.mark.slow  # a federated FFT run and one reference fine-tune
def test_calibrated_attack_beats_chance_when_clients_overfit(tmp_path):
    language = {"name": "synthetic-clinical", "params": {"num_classes": 5, "max_length": 48, "objective": "language"}}
    scenario = make_scenario(tmp_path, task=language, method="fft", attacks=["mia-calibrated"],
                             federation={"clients": 2, "clients_per_round": 2, "rounds": 2, "local_steps": 15,
                                         "batch_size": 8, "lr": 0.003, "examples_per_client": 48})
    prepared = prepare(scenario, 0, plan(scenario))
    fl.run(prepared.fed, prepared.transcript, prepared.truth)
    views = _builder(prepared)
    (attack,) = prepared.built.attacks
    metrics = {m.name: m for m in score(attack.run(views.for_attack(attack), generator("t")), views.truth)}
    assert metrics["mia.auc"].ci_low > 0.6, metrics["mia.auc"]
