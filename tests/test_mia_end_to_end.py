"""Membership inference through the whole harness: chance on the base model, strength when overfit."""

from __future__ import annotations

import pytest

from bench import federation as fl
from bench.runner import plan, prepare
from bench.score import score
from bench.seeding import generator
from bench.views import ViewBuilder
from tests.helpers import make_scenario

LANGUAGE = {"name": "synthetic-clinical", "params": {"num_classes": 5, "max_length": 48, "objective": "language"}}
EXTERNAL = ["mia-loss", "mia-zlib", "mia-mink", "mia-minkpp", "mia-reference", {"name": "mia-lira", "params": {"shadows": 4}}]


def _attack_metrics(prepared):
    views = ViewBuilder(prepared.scenario, prepared.seed, prepared.built, prepared.transcript, prepared.tokenizer,
                        prepared.clients, prepared.task_data, prepared.truth)
    out = {}
    for attack in prepared.built.attacks:
        prediction = attack.run(views.for_attack(attack), generator("test", attack.name))
        out[attack.name] = {m.name: m for m in score(prediction, views.truth)}
    return out


def test_every_attack_is_at_chance_on_the_base_model(tmp_path):
    scenario = make_scenario(tmp_path, task=LANGUAGE, method="lora", attacks=EXTERNAL,
                             federation={"clients": 4, "clients_per_round": 4, "rounds": 1, "local_steps": 2,
                                         "examples_per_client": 48})
    prepared = prepare(scenario, 0, plan(scenario))  # no round runs: nothing was trained on the members
    for name, metrics in _attack_metrics(prepared).items():
        auc = metrics["mia.auc"]
        assert auc.ci_low <= 0.5 <= auc.ci_high, (name, auc)


@pytest.mark.slow  # LiRA's lead at 1% FPR is real but thin at 48 non-members: it tied on other zoo weights
def test_attacks_beat_chance_when_clients_overfit_and_lira_leads_at_low_fpr(tmp_path):
    attacks = ["mia-loss", "mia-reference", {"name": "mia-lira", "params": {"shadows": 8}}]
    scenario = make_scenario(tmp_path, task=LANGUAGE, method="fft", attacks=attacks,
                             federation={"clients": 2, "clients_per_round": 2, "rounds": 2, "local_steps": 15,
                                         "batch_size": 8, "lr": 0.003, "examples_per_client": 48})
    prepared = prepare(scenario, 0, plan(scenario))
    fl.run(prepared.fed, prepared.transcript, prepared.truth)
    metrics = _attack_metrics(prepared)
    for name, values in metrics.items():  # the figures for the record (pytest -s)
        print(name, {k: round(m.value, 3) for k, m in values.items()})
    for name in ("mia-loss", "mia-reference", "mia-lira"):
        assert metrics[name]["mia.auc"].ci_low > 0.6, (name, metrics[name]["mia.auc"])
    assert metrics["mia-lira"]["mia.tpr@0.01"].value > metrics["mia-loss"]["mia.tpr@0.01"].value


def test_run_with_figures_writes_a_log_log_roc_per_run(tmp_path):
    from bench.cli import main
    from tests.helpers import scenario_dict, write_scenario

    path = write_scenario(tmp_path, scenario_dict(attacks=["mia-loss", "mia-zlib"],
                                                  federation={"rounds": 1, "local_steps": 1}))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet", "--figures"]) == 0
    figures = list((tmp_path / "out" / "figures").glob("roc-*.png"))
    assert len(figures) == 1 and figures[0].stat().st_size > 1000


def test_shadow_models_are_shared_by_runs_that_differ_only_in_defenses(tmp_path):
    from bench import views

    first = make_scenario(tmp_path, federation={"rounds": 1, "local_steps": 1})
    second = make_scenario(tmp_path, federation={"rounds": 1, "local_steps": 1}, defenses=["robust-clip"])
    examples = [{"text": "Patient Ann Berg, MRN 123456, age 40, seen on 2026-01-02 with a cough.", "label": 1}] * 4
    handles = []
    for scenario in (first, second):
        prepared = prepare(scenario, 0, plan(scenario))
        builder = ViewBuilder(scenario, 0, prepared.built, prepared.transcript, prepared.tokenizer, prepared.clients,
                              prepared.task_data, prepared.truth)
        handles.append(builder.train_shadow(examples, generator("lira")))
    assert handles[0] is handles[1]
    assert len(views.SHADOW_CACHE) >= 1
