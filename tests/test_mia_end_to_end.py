"""Membership inference through the whole harness: chance on the base model, strength when overfit."""

from __future__ import annotations

import pytest
import torch

from bench.api.seeding import generator
from bench.engine import federation as fl
from bench.engine.runner import plan, prepare
from bench.engine.views import ViewBuilder
from bench.scoring.score import score
from tests.helpers import make_scenario

LANGUAGE = {"name": "synthetic-clinical", "params": {"num_classes": 5, "max_length": 48, "objective": "language"}}
EXTERNAL = ["mia-loss", "mia-zlib", "mia-mink", "mia-minkpp", "mia-reference", {"name": "mia-lira", "params": {"shadows": 4}}]


def test_candidate_cap_limits_the_draw_and_none_draws_every_record(tmp_path):
    scenario = make_scenario(tmp_path, federation={"rounds": 1, "local_steps": 1})  # 3 clients x 6 members
    prepared = prepare(scenario, 0, plan(scenario))
    args = (scenario, 0, prepared.built, prepared.transcript, prepared.tokenizer, prepared.clients,
            prepared.task_data, prepared.truth)
    assert len(ViewBuilder(*args).candidates) == 36  # the default cap (256) is above the 18 + 18 records
    capped = ViewBuilder(*args, max_candidates=8)
    assert len(capped.candidates) == 8 and int(capped.truth.member_flags.sum()) == 4
    every = ViewBuilder(*args, max_candidates=None)
    assert len(every.candidates) == 36 and int(every.truth.member_flags.sum()) == 18


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


@pytest.mark.slow  # ~40 s on one thread: a federated FFT run and 8 shadow fine-tunes
def test_attacks_beat_chance_when_clients_overfit(tmp_path):
    """Every attack separates 48 members from 48 non-members far above chance, at every FPR.

    Which attack leads at 1% FPR is not asserted here: with 48 non-members 1% FPR is zero false
    positives, and the order flipped between zoo weights. tests/benchmarks/test_bench_mia_lira.py
    measures the LiRA-vs-loss gap on 1024 non-members with paired bootstrap intervals."""
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
        # chance at zero false positives is a TPR of about 1/48; the interval must clear it
        assert metrics[name]["mia.tpr@0.01"].ci_low > 0.1, (name, metrics[name]["mia.tpr@0.01"])


def test_run_with_figures_writes_a_log_log_roc_per_run(tmp_path):
    from bench.cli import main
    from tests.helpers import scenario_dict, write_scenario

    path = write_scenario(tmp_path, scenario_dict(attacks=["mia-loss", "mia-zlib"],
                                                  federation={"rounds": 1, "local_steps": 1}))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet", "--figures"]) == 0
    figures = list((tmp_path / "out" / "figures").glob("roc-*.png"))
    assert len(figures) == 1 and figures[0].stat().st_size > 1000


def test_shadow_models_are_shared_by_runs_that_differ_only_in_defenses(tmp_path):
    from bench.engine import views

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


def _shadow_of(scenario):
    examples = [{"text": "Patient Ann Berg, MRN 123456, age 40, seen on 2026-01-02 with a cough.", "label": 1}] * 4
    prepared = prepare(scenario, 0, plan(scenario))
    builder = ViewBuilder(scenario, 0, prepared.built, prepared.transcript, prepared.tokenizer, prepared.clients,
                          prepared.task_data, prepared.truth)
    return builder.train_shadow(examples, generator("lira"))


def test_the_learning_curve_and_client_batching_do_not_change_a_cells_references(tmp_path):
    # Table 4's undefended cell draws the learning curve and its DP cells do not: they must calibrate with the
    # same references (a fresh draw would add its noise to the paired difference); until session 10 the
    # undefended cell fine-tuned references of its own
    base = {"rounds": 1, "local_steps": 1}
    plain = _shadow_of(make_scenario(tmp_path, federation=base, defenses=["robust-clip"]))
    curve = _shadow_of(make_scenario(tmp_path, federation={**base, "utility_curve": True, "client_batch": 1}))
    assert curve is plain
    other_lr = _shadow_of(make_scenario(tmp_path, federation={**base, "lr": 0.02}))
    assert other_lr is not plain  # a field that changes training still keeps references apart


def test_scenario_sets_how_many_candidates_membership_attacks_score(tmp_path, monkeypatch):
    import bench.engine.runner as runner
    from bench.spec.scenario import Federation

    with pytest.raises(ValueError, match="mia_candidates"):
        Federation(mia_candidates=1)
    seen = []

    class Recording(ViewBuilder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(len(self.candidates))

    monkeypatch.setattr(runner, "ViewBuilder", Recording)
    scenario = make_scenario(tmp_path, federation={"rounds": 1, "local_steps": 1, "mia_candidates": 8})
    rows = runner.execute(scenario, 0)
    assert all(r.status == "ok" for r in rows) and seen == [8]



def _central_and_federated_shadows(tmp_path, clients: int):
    """A run's central and federated shadow (fft: no random initialisation) on every member of its clients
    (6 each), each fitted afresh, and the run's untrained state they both start from."""
    from bench.engine import views

    # SGD: Adam turns float-level differences between the federation's batched client step and the central
    # step (a weight whose gradient is 1e-12 on one path and 0 on the other) into steps of the full size
    scenario = make_scenario(tmp_path, method="fft", federation={
        "clients": clients, "clients_per_round": clients, "rounds": 1, "local_steps": 3, "batch_size": 8,
        "optimizer": "sgd", "lr": 0.1, "examples_per_client": 12, "member_fraction": 0.5})
    prepared = prepare(scenario, 0, plan(scenario))
    builder = ViewBuilder(scenario, 0, prepared.built, prepared.transcript, prepared.tokenizer, prepared.clients,
                          prepared.task_data, prepared.truth)
    examples = [e for c in prepared.clients for e in c.members]
    views.SHADOW_CACHE.clear()
    central = builder.train_shadow(examples, generator("lira")).get_flat()
    federated = builder.train_shadow(examples, generator("lira"), federated=True)
    views.SHADOW_CACHE.clear()
    again = builder.train_shadow(examples, generator("lira"), federated=True).get_flat()
    return prepared.fed.method.get_flat(), central, federated.get_flat(), again


def test_a_federated_shadow_of_one_client_is_the_central_shadow(tmp_path):
    # one client, one round of 3 local steps on its 6 records, batches of all 6: the federation's replay and the
    # central fine-tune at the same exposure (3 steps) take the same steps, so the shadows agree
    start, central, federated, again = _central_and_federated_shadows(tmp_path, clients=1)
    assert (central - start).abs().max() > 1e-4  # both trained
    assert torch.allclose(federated, central, atol=1e-6)
    assert torch.equal(federated, again)


def test_a_federated_shadow_averages_its_clients(tmp_path):
    # two clients of 6: FedAvg of two 3-step trajectories, not 6 central steps over 12 records
    start, central, federated, again = _central_and_federated_shadows(tmp_path, clients=2)
    assert (federated - start).abs().max() > 1e-4
    assert not torch.allclose(federated, central, atol=1e-4)
    assert torch.equal(federated, again)  # refitted after the cache is cleared: the same shadow
