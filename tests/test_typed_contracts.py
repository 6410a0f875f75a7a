"""Contracts that used to be read with ``getattr(obj, name, default)``, now declared (issue 17 item 2).

Each test fails on the code that read the contract reflectively: the declaration is what a reader
relies on, so a component that does not make it is refused, and a reader gets its value directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from bench.api.defense import Defense, DefenseSlot
from bench.api.registry import DEFENSES, MODELS, TASKS, load_plugins
from bench.api.transcript import Canary, GroundTruth
from bench.api.vocabulary import DefenseFamily


def test_every_defense_declares_a_family_and_one_that_does_not_is_refused_when_built():
    load_plugins()
    for name in DEFENSES.names():
        assert isinstance(DEFENSES.get(name).family, DefenseFamily), name

    class Undeclared(Defense):
        name, slot = "undeclared", DefenseSlot.CLIENT_UPDATE

    with pytest.raises(TypeError, match="must declare family"):
        Undeclared(Undeclared.Config())

    class Declared(Undeclared):
        family = DefenseFamily.DP

    assert Declared(Declared.Config()).family is DefenseFamily.DP


def test_client_side_state_an_engine_carries_is_declared_on_every_defense():
    """Flower's ClientApp reads ``ledger`` and ``audit`` directly: every defense has them (None by default)."""
    load_plugins()
    assert Defense.ledger is None and Defense.audit is None  # declared on the base: every defense has them
    dp_local = DEFENSES.get("dp-local")
    assert dp_local(dp_local.Config(noise_multiplier=1.0)).ledger is not None


@dataclass
class _Audit:  # module level: the Flower engine pickles a defense's audit
    epsilon: float = 0.0

    def epsilon_lower(self, delta: float, confidence: float) -> float | None:
        return self.epsilon


def test_the_flower_engine_carries_a_defense_holding_an_audit():
    """The engine reads ``audit`` directly (it used to refuse a defense that set one): a job that starts an
    audit sends it back to the server's copy."""
    pytest.importorskip("flwr")
    from bench.engine.flower import state

    class Audited(Defense):
        name, family = "audited", DefenseFamily.DP

    on_client, on_server = Audited(Audited.Config()), Audited(Audited.Config())
    before = state.snapshot(on_client)
    assert state.changes(on_client, before) == {}  # no audit: nothing to carry
    on_client.audit = _Audit(1.5)
    state.apply(on_server, state.changes(on_client, before))
    assert on_server.audit == _Audit(1.5)


def test_a_task_config_must_derive_task_config():
    """``max_length`` is read directly off every task's config (``bench.spec.scenario.check``)."""
    load_plugins()
    task_cls = TASKS.get("synthetic-clinical")
    assert task_cls(task_cls.Config(max_length=17)).config.max_length == 17

    @dataclass(frozen=True, kw_only=True)
    class Foreign:
        num_classes: int = 2

    with pytest.raises(TypeError, match="must derive Task.Config"):
        task_cls(Foreign())


@pytest.mark.parametrize("path, on_hub", [("Qwen/Qwen2.5-0.5B", True), ("./my-model", False), ("/abs/model", False)])
def test_a_model_source_says_whether_it_is_a_hub_name(path, on_hub):
    load_plugins()
    hf = MODELS.get("hf")
    assert hf(hf.Config(path=path)).on_hub() is on_hub
    zoo = MODELS.get("tiny-gpt2")
    assert zoo(zoo.Config()).on_hub() is False


def test_the_methods_own_utility_is_added_when_the_runner_passes_the_method(monkeypatch):
    from bench.scoring import utility

    monkeypatch.setitem(utility.EVALUATORS, "toy", lambda handle, task, test: ["base"])
    method = SimpleNamespace(extra_utility=lambda handle, task, test: ["own"])
    handle, task = SimpleNamespace(), SimpleNamespace(kind="toy")
    assert utility.evaluate(handle, task, []) == ["base"]
    assert utility.evaluate(handle, task, [], method) == ["base", "own"]


def test_canaries_are_typed_ground_truth_and_an_empty_secret_never_hits():
    from bench.scoring.extraction import canary_hits

    truth = GroundTruth(canaries=[Canary("p ", ["1", "2"], "2", repeats=3)])
    assert truth.canaries[0].repeats == 3
    assert canary_hits(["x 2"], truth.canaries) == [True]
    assert canary_hits(["x 2"], [Canary("p ", ["1", "2"], "")]) == [False]  # an attacker's copy: secret blanked
    assert torch.equal(torch.tensor(canary_hits(["1", "3"], [Canary("a", ["1"], "1"), Canary("b", ["2"], "2")])),
                       torch.tensor([True, False]))


def test_every_vantage_keys_its_round_fields_as_the_enum():
    from bench.api.vocabulary import Vantage
    from bench.engine.views import ROUND_FIELDS

    assert set(ROUND_FIELDS) == set(Vantage) and all(isinstance(k, Vantage) for k in ROUND_FIELDS)


def test_the_runner_stores_each_defenses_declared_family(tmp_path):
    from bench.engine.runner import failed_rows
    from bench.spec.scenario import load

    path = tmp_path / "s.yaml"
    path.write_text("name: s\ntier: open-weight\nmodel: tiny-gpt2\ntask: synthetic-clinical\nmethod: lora\n"
                    "defenses: [robust-median, {name: dp-local, params: {noise_multiplier: 1.0}}]\nattacks: [mia-loss]\n")
    (scenario,) = load(str(path))
    rows = failed_rows(scenario, 0, "stopped")
    assert rows[0].extra["defense_families"] == {"dp-local": "DP", "robust-median": "robust aggregation"}
