"""The vocabulary enums (bench.api.vocabulary) name every word the components actually use.

A new vantage, task kind, tier or attack family must be added to its enum: these tests read what the
registered components declare and fail on a word the vocabulary does not have.
"""

from __future__ import annotations

import pytest

from bench.api.registry import ATTACKS, METHODS, TASKS, TIERS, load_plugins
from bench.api.transcript import VANTAGES
from bench.api.vocabulary import AttackFamily, AttackRole, RunStatus, TaskKind, TierName, Vantage
from bench.reporting.leaderboard import FAMILY_HEADLINE
from bench.reporting.table4 import ROLES

load_plugins()


def test_a_member_equals_its_word():
    assert Vantage.SERVER == "server" and TierName("gray-box") is TierName.GRAY_BOX
    assert VANTAGES == ("server", "aggregate", "participant", "external", "provider")
    with pytest.raises(ValueError):
        Vantage("client")


def test_every_registered_tier_is_a_tier_name():
    assert set(TIERS.names()) == {t.value for t in TierName}


def test_every_attack_declares_a_known_vantage_task_kinds_and_family():
    for name in ATTACKS.names():
        attack = ATTACKS.get(name)
        assert attack.vantage in set(Vantage), name
        assert set(attack.task_kinds) <= set(TaskKind), name
        assert attack.family in set(AttackFamily) and attack.table_role() in set(AttackRole), name


def test_every_method_trains_known_task_kinds():
    for name in METHODS.names():
        assert set(METHODS.get(name).task_kinds) <= set(TaskKind), name


def test_every_task_kind_is_known():
    kinds = {getattr(TASKS.get(name), "kind", None) for name in TASKS.names()}
    kinds = {k for k in kinds if isinstance(k, str)}  # local files pick theirs from a parameter
    assert kinds and kinds <= set(TaskKind)
    from bench.world.tasks import LOCAL_OBJECTIVES

    assert set(LOCAL_OBJECTIVES) <= set(TaskKind)


def test_the_families_reporting_uses_are_the_vocabulary():
    assert set(FAMILY_HEADLINE) == set(AttackFamily)
    assert set(ROLES) == set(AttackRole)
    from bench.api.vocabulary import DefenseFamily
    from bench.reporting.paper4 import TARGETS

    assert set(TARGETS) <= set(DefenseFamily)  # the paper's families are declared words, not names


def test_an_attack_without_a_family_or_with_a_foreign_role_is_refused_when_built():
    from bench.api.attack import Attack

    class Undeclared(Attack):
        def run(self, view, rng):
            return None

    class PoisonWithoutRole(Undeclared):
        family = AttackFamily.POISON

    class MiaAsByzantine(Undeclared):
        family, role = AttackFamily.MIA, AttackRole.BYZANTINE

    for cls, words in ((Undeclared, "must declare family"), (PoisonWithoutRole, "BACKDOOR or BYZANTINE"),
                       (MiaAsByzantine, "does not belong")):
        with pytest.raises(TypeError, match=words):
            cls(cls.Config())

    class Declared(Undeclared):
        family = AttackFamily.INVERSION

    assert Declared(Declared.Config()).table_role() is AttackRole.INVERSION


def test_byzantine_and_backdoor_attacks_declare_their_roles():
    roles = {name: ATTACKS.get(name).table_role() for name in ATTACKS.names()}
    assert roles["byz-ipm"] is AttackRole.BYZANTINE and roles["poison-backdoor"] is AttackRole.BACKDOOR
    assert {r for n, r in roles.items() if n.startswith("byz-")} == {AttackRole.BYZANTINE}


def test_run_statuses_cover_what_the_runner_writes():
    import inspect

    from bench.engine import runner

    source = inspect.getsource(runner)
    written = {s for s in RunStatus if f"RunStatus.{s.name}" in source}
    assert written == set(RunStatus)  # the runner writes every status, through the enum
    bare = [s for s in ("ok", "failed", "incompatible", "skipped", "error") if f'status="{s}"' in source or f'"{s}", ' in source]
    assert not bare, f"bare status words in the runner: {bare}"


def test_a_status_member_is_stored_as_its_word(tmp_path):
    import json

    from bench.store.results import ResultStore, Row

    row = Row(run_id="r", scenario="s", scenario_hash="h", seed=0, tier=TierName.OPEN_WEIGHT, model="m", task="t",
              method="lora", defenses="none", attack="none", metric="run", value=None, status=RunStatus.FAILED)
    with ResultStore(tmp_path) as store:
        store.append([row])
    (record,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    (stored,) = record["rows"]
    assert stored["status"] == "failed" and stored["tier"] == "open-weight" and type(stored["status"]) is str
    assert '"status": "failed"' in (tmp_path / "results.jsonl").read_text()  # the word, not RunStatus.FAILED
