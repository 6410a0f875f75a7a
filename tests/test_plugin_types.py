"""The Protocols plugins are typed against (``bench.api.handles``, ``bench.api.plugin_types``) name what the engine really passes.

Attacks and defenses may not import the world or the spec, so they read a model handle, a task, a canary or
the federation through a Protocol; no type checker runs in CI, so this test checks each Protocol's members
against the object the engine hands over (an instance where the member is set in ``__init__``).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Protocol

import pytest
import torch
from torch import nn

from bench.api import handles
from bench.api import plugin_types as pt
from bench.api.registry import TASKS, load_plugins
from bench.spec.scenario import Federation, Scenario
from bench.world.tasks import Task
from bench.world.tiers import OpenModel, ProviderAPI


def members(protocol: type) -> set[str]:
    """Every attribute, property and method a Protocol (and the Protocols it extends) declares."""
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls is object or cls is Protocol or Protocol not in cls.__mro__:
            continue
        names |= {n for n in vars(cls) if not n.startswith("_")} | set(inspect.get_annotations(cls))
    return names


def has(obj: object, name: str) -> bool:
    """``obj`` has ``name`` as a class member or an instance attribute (properties are not called)."""
    return hasattr(type(obj), name) or name in getattr(obj, "__dict__", {})


def _task() -> Task:
    load_plugins()
    cls = TASKS.get("synthetic-clinical")
    return cls(cls.Config())


def _open_model() -> OpenModel:
    return OpenModel(nn.Linear(2, 2), None, _task(), None)


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("protocol, make", [
    (handles.ModelHandle, _open_model),
    (handles.ModelHandle, lambda: ProviderAPI(_open_model(), frozenset(), [])),
    (handles.OpenHandle, _open_model),
    (handles.TaskSpec, _task),
    (handles.TaskConfig, lambda: _task().config),
], ids=["open-model", "provider-api", "weights", "task", "task-config"])
def test_the_world_object_has_every_member_its_protocol_names(protocol, make):
    obj = make()
    missing = sorted(name for name in members(protocol) if not has(obj, name))
    assert not missing, f"{type(obj).__name__} lacks {missing} of {protocol.__name__}"


@pytest.mark.parametrize("protocol, cls", [
    (pt.ExchangeSettings, Federation),
    (pt.ExchangeScenario, Scenario),
])
def test_the_spec_dataclass_has_every_field_its_protocol_names(protocol, cls):
    assert members(protocol) <= _fields(cls), sorted(members(protocol) - _fields(cls))


def test_members_sees_inherited_declarations_and_an_object_without_them_fails():
    assert {"task", "generate", "model", "get_flat", "at_state"} <= members(handles.OpenHandle)
    assert {"clients_per_round", "protocol", "kd_top_k"} <= members(pt.ExchangeSettings)
    bare = object()
    assert [n for n in members(handles.ModelHandle) if not has(bare, n)]
    assert has(_open_model(), "model") and not has(torch.nn.Linear(1, 1), "task")
