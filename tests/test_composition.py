"""Defense composition, declared per slot and checked once, before anything runs: one aggregation rule,
at most one transport, update hooks in the declared order (not the YAML order), a compatibility check
without side effects, and peers' decisions taken in ``setup``."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from bench.api.config import bind
from bench.api.defense import Defense, DefenseSlot, composition_problem, in_slot_order
from bench.api.errors import IncompatibleError, UserError
from bench.api.registry import DEFENSES
from bench.api.transcript import GroundTruth, Transcript
from bench.api.vocabulary import DefenseFamily
from bench.cli import main
from bench.engine import federation as fl
from bench.engine.runner import incompatibility, plan, prepare
from bench.engine.views import ROUND_FIELDS, _strip
from bench.spec.scenario import load
from tests.helpers import make_scenario, scenario_dict, write_scenario

TINY = {"clients": 3, "clients_per_round": 3, "rounds": 1, "local_steps": 1}


def build(name: str, **params) -> Defense:
    cls = DEFENSES.get(name)
    return cls(bind(cls.Config, params, file=None, key=name))


def still_trainer(job):
    """A trainer that leaves the weights where they are: every update is zero, and the test is quick."""
    return {"loss": 0.0}


# --- capacities: refused at loading (exit 2, file and key) and at planning (plans built in code) ------------
@pytest.mark.parametrize(("first", "second"), [("robust-krum", "robust-median"), ("secagg", "he")])
def test_two_defenses_of_a_one_defense_slot_are_refused_at_loading_naming_both(tmp_path, capsys, first, second):
    path = write_scenario(tmp_path, scenario_dict(defenses=[first, second]))
    with pytest.raises(UserError) as refused:
        load(path)
    assert refused.value.file == str(path) and refused.value.key == "defenses"
    assert first in str(refused.value) and second in str(refused.value)
    assert main(["validate", str(path)]) == 2
    assert f"{path}: defenses:" in capsys.readouterr().err


@pytest.mark.parametrize(("first", "second"), [("robust-krum", "robust-median"), ("secagg", "he")])
def test_two_defenses_of_a_one_defense_slot_are_refused_at_planning_naming_both(tmp_path, first, second):
    # Krum with f = 0 plans at this scenario's 3 clients (its own check refuses n < 2f + 3 for f = 1)
    entry = {"name": first, "params": {"f": 0}} if first == "robust-krum" else first
    scenario = make_scenario(tmp_path, defenses=[entry])
    extra = load(write_scenario(tmp_path, scenario_dict(defenses=[second]), "other.yaml"))[0].defenses
    doubled = dataclasses.replace(scenario, defenses=scenario.defenses + extra)  # what the loader would refuse
    with pytest.raises(IncompatibleError) as refused:
        plan(doubled)
    assert first in str(refused.value) and second in str(refused.value)
    built = plan(scenario)
    built.defenses.append(build(second))
    reason = incompatibility(built, scenario)
    assert first in reason and second in reason


def test_the_engine_refuses_two_aggregation_rules_instead_of_using_the_first(tmp_path):
    scenario = make_scenario(tmp_path, federation=TINY)
    prepared = prepare(scenario, 0, plan(scenario))
    prepared.fed.defenses = [build("robust-krum"), build("robust-median")]  # a federation built by hand
    prepared.fed.trainer = still_trainer
    with pytest.raises(ValueError, match="robust-krum and robust-median"):
        fl.run(prepared.fed, Transcript(), GroundTruth())


def test_at_most_one_defense_replaces_local_training():
    class Replacing(Defense):
        name, slot, replaces_training = "replacing", DefenseSlot.TRAINING, True
        family = DefenseFamily.DP

    class AlsoReplacing(Replacing):
        name = "also-replacing"

    assert composition_problem([DEFENSES.get("dp-local"), DEFENSES.get("dp-central")]) is None
    assert "replacing and also-replacing" in composition_problem([Replacing, AlsoReplacing])


def test_a_class_that_overrides_a_one_defense_hook_must_declare_its_slot():
    with pytest.raises(TypeError, match="AGGREGATION"):

        class Undeclared(Defense):
            def aggregate(self, round_index, updates, weights, rng):
                return updates.mean(0)


# --- the declared order of the update hooks, observed through the engine --------------------------------
class Recorder(Defense):
    family = DefenseFamily.DP
    calls: list = []

    def on_client_update(self, round_index, client, update, rng):
        Recorder.calls.append((self.name, "client_update", client))
        return update * 2 if self.slot is DefenseSlot.TRAINING else update + 1  # order-sensitive on purpose

    def on_aggregate(self, round_index, aggregate, num_clients, rng):
        Recorder.calls.append((self.name, "aggregate"))
        return aggregate


class EarlyRecorder(Recorder):
    name, slot = "early-recorder", DefenseSlot.TRAINING


class LateRecorder(Recorder):
    name, slot = "late-recorder", DefenseSlot.CLIENT_UPDATE


def test_update_hooks_run_in_the_declared_order_not_the_yaml_order(tmp_path, monkeypatch):
    DEFENSES.names()  # load the plugins first, so that they do not overwrite the entries below
    for cls in (EarlyRecorder, LateRecorder):
        monkeypatch.setitem(DEFENSES._entries, cls.name, cls)
    scenario = make_scenario(tmp_path, federation=TINY, defenses=["late-recorder", "early-recorder"])
    built = plan(scenario)
    assert [d.name for d in built.defenses] == ["early-recorder", "late-recorder"]
    prepared = prepare(scenario, 0, built)
    prepared.fed.trainer, prepared.fed.keep = still_trainer, frozenset({"client_updates"})
    Recorder.calls = []
    fl.run(prepared.fed, prepared.transcript, prepared.truth)
    record = prepared.transcript.rounds[0]
    expected = [(name, "client_update", c) for name in ("early-recorder", "late-recorder") for c in record.sampled]
    assert Recorder.calls == expected + [("early-recorder", "aggregate"), ("late-recorder", "aggregate")]
    # (0 * 2) + 1 everywhere: doubled first, then shifted; the YAML order would have sent 2s
    assert all(bool((u == 1).all()) for u in record.transmitted.values())


def test_slot_order_is_independent_of_the_listed_order():
    defenses = [build("secagg"), build("dp-central", noise_multiplier=1.0), build("dp-local", noise_multiplier=1.0)]
    expected = ["dp-local", "dp-central", "secagg"]
    assert [d.name for d in in_slot_order(defenses)] == expected
    assert [d.name for d in in_slot_order(defenses[::-1])] == expected


# --- the compatibility check has no side effects; peers' decisions are taken in setup -------------------
@pytest.mark.parametrize("names", [("dp-central", "secagg", "dp-local"), ("robust-krum", "he", "dp-central")])
def test_check_compatible_changes_nothing_whatever_the_order_or_the_repetition(names):
    params = {"dp-central": {"noise_multiplier": 1.0}, "dp-local": {"noise_multiplier": 1.0}}
    defenses = [build(name, **params.get(name, {})) for name in names]
    before = [pickle.dumps(d) for d in defenses]

    def reasons(order):
        return {d.name: d.check_compatible([o for o in order if o is not d], None) for d in order}

    first = reasons(defenses)
    assert first == reasons(defenses) == reasons(defenses[::-1])
    assert [pickle.dumps(d) for d in defenses] == before
    refused = {name for name, reason in first.items() if reason}
    assert refused == ({"robust-krum", "dp-central"} if "robust-krum" in names else set())  # the checks did look


def test_setup_takes_the_decisions_that_depend_on_the_other_defenses(tmp_path):
    dp = {"name": "dp-central", "params": {"noise_multiplier": 1.0}}
    scenario = make_scenario(tmp_path, federation=TINY, defenses=["secagg", dp])
    built = plan(scenario)
    central, secagg = built.defenses
    assert central.noise_at == "server" and secagg.transport().encoding_range()[1] is None  # planning decided nothing
    prepare(scenario, 0, built)
    assert central.noise_at == "clients"  # noise at the clients, since secagg keeps the server from the parts
    assert secagg.transport().encoding_range()[1] == central.coordinate_bound()  # the range holds dp's noise


# --- the server's view: the transport decides what it holds (no per-defense vantage removal) ------------
def test_under_a_transport_the_server_view_holds_only_what_the_server_received(tmp_path):
    scenario = make_scenario(tmp_path, federation=TINY)
    prepared = prepare(scenario, 0, plan(scenario))
    prepared.fed.trainer, prepared.fed.keep = still_trainer, frozenset({"client_updates"})
    prepared.fed.defenses = [build("secagg")]
    transcript = Transcript()
    fl.run(prepared.fed, transcript, GroundTruth())
    seen = _strip(transcript.rounds[0], ROUND_FIELDS["server"]).transmitted
    assert set(seen) == set(transcript.rounds[0].sampled)
    for message in seen.values():  # masked residues, not the all-zero updates the clients computed
        assert message.dtype == torch.int64 and bool(message.ne(0).any())
