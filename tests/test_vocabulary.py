"""The vocabulary enums (bench.api.vocabulary) name every word the components actually use.

A new vantage, task kind, tier or attack family must be added to its enum: these tests read what the
registered components declare and fail on a word the vocabulary does not have.
"""

from __future__ import annotations

import pytest

from bench.api.registry import ATTACKS, METHODS, TASKS, TIERS, load_plugins
from bench.api.transcript import VANTAGES
from bench.api.vocabulary import AttackFamily, RunStatus, TaskKind, TierName, Vantage
from bench.reporting.leaderboard import FAMILY_HEADLINE, FAMILY_OF_PREFIX, attack_family

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
        assert (attack.family or attack_family(name)) in set(AttackFamily), name  # declared, else the old prefix


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
    assert set(FAMILY_OF_PREFIX.values()) <= set(AttackFamily)  # the fallback for rows without a declared family


def test_run_statuses_cover_what_the_runner_writes():
    import inspect

    from bench.engine import runner

    source = inspect.getsource(runner)
    written = {s for s in ("ok", "failed", "incompatible", "skipped", "error") if f'status="{s}"' in source}
    assert written and written <= set(RunStatus)
