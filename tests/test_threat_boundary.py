"""The tier boundary is a type: a threat view reaches only what its tier and vantage grant.

Real runs per tier (open-source, open-weight, gray-box, black-box); for each vantage the view is
walked: every object reachable through attributes (``__dict__``, ``__slots__``, properties),
containers, function closures and defaults, bound methods' ``__self__``, ``functools.partial``
arguments and weak references. Module globals and classes are not walked: an attack is in-process
code and could import anything; the boundary is what the view hands out.

Then the other side of the contract: attacks whose declared access a tier does not grant are
refused by ``plan`` before training and recorded ``incompatible`` with the reason, never run.
"""

from __future__ import annotations

import functools
import types
import weakref
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from bench.api.errors import TierAccessError
from bench.api.method import Method
from bench.api.registry import ATTACKS
from bench.api.transcript import VANTAGES, GroundTruth, ProviderRecord, Transcript
from bench.engine import federation as fl
from bench.engine import runner
from bench.engine.runner import execute, plan, prepare
from bench.engine.views import ViewBuilder
from bench.world.partition import ClientData
from bench.world.tiers import Access, OpenModel
from tests.helpers import make_scenario

TINY = {"clients": 2, "clients_per_round": 2, "rounds": 2, "local_steps": 1, "batch_size": 4,
        "examples_per_client": 8, "eval_examples": 8}
METHOD_OF = {"open-source": "lora", "open-weight": "fft", "gray-box": "provider-tuning", "black-box": "textual-prompt"}
CLOSED = ("gray-box", "black-box")
LEAVES = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.Generator,
          types.ModuleType, type)


# --- the walker --------------------------------------------------------------------------------
def _slot_names(obj: Any) -> list[str]:
    names = []
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        names += [slots] if isinstance(slots, str) else list(slots)
    return names


def _properties(obj: Any) -> list[Any]:
    out = []
    for name in dir(type(obj)):
        if isinstance(getattr(type(obj), name, None), property):
            try:
                out.append(getattr(obj, name))
            except Exception:  # a refused or unavailable property reaches nothing
                pass
    return out


def _children(obj: Any) -> list[Any]:
    if isinstance(obj, LEAVES) or isinstance(obj, torch.Tensor):
        return [obj.grad] if isinstance(obj, torch.Tensor) and obj.grad is not None else []
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, functools.partial):
        return [obj.func, *obj.args, *obj.keywords.values()]
    if isinstance(obj, types.FunctionType):
        cells = [c.cell_contents for c in (obj.__closure__ or ()) if _filled(c)]
        return cells + list(obj.__defaults__ or ()) + list((obj.__kwdefaults__ or {}).values())
    if isinstance(obj, (types.MethodType, types.BuiltinMethodType, types.MethodWrapperType)):
        return [getattr(obj, "__self__", None), getattr(obj, "__func__", None)]
    if isinstance(obj, weakref.ref):
        return [obj()]
    out = []
    try:
        out.append(object.__getattribute__(obj, "__dict__"))
    except AttributeError:
        pass
    for name in _slot_names(obj):
        try:
            out.append(object.__getattribute__(obj, name))
        except AttributeError:
            pass
    return out + ([] if isinstance(obj, nn.Module) else _properties(obj))


def _filled(cell: Any) -> bool:
    try:
        return cell.cell_contents is not cell  # reading an empty cell raises
    except ValueError:
        return False


def reachable(root: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen[id(obj)] = obj
        stack.extend(_children(obj))
    return list(seen.values())


def test_the_walker_follows_closures_bound_methods_partials_and_slots():
    class Slotted:
        __slots__ = ("inner",)

    secret = GroundTruth()
    slotted = Slotted()
    slotted.inner = [functools.partial(print, {"k": (secret,)})]
    holder = SimpleNamespace(bound=SimpleNamespace(x=slotted).__repr__, fn=lambda: slotted)
    found = reachable(SimpleNamespace(h=holder))
    assert any(o is secret for o in found)


# --- real runs, one per tier --------------------------------------------------------------------
class Probe:
    """Stands at a vantage and keeps every transcript part (so the walk sees the most a view can hold)."""

    name = "probe"
    needs = frozenset({"client_updates", "global_states", "aggregates"})
    changes_training = False
    access: frozenset = frozenset()

    def __init__(self, vantage: str = "server"):
        self.vantage = vantage


@pytest.fixture(scope="module", params=sorted(METHOD_OF))
def trained(request, tmp_path_factory):
    tier = request.param
    scenario = make_scenario(tmp_path_factory.mktemp(tier), tier=tier, method=METHOD_OF[tier], federation=TINY)
    built = plan(scenario)
    built.attacks = [Probe()]
    p = prepare(scenario, 0, built)
    fl.run(p.fed, p.transcript, p.truth)
    views = ViewBuilder(scenario, 0, built, p.transcript, p.tokenizer, p.clients, p.task_data, p.truth)
    assert p.transcript.rounds and p.truth.client_batches  # the walk has something to find
    return SimpleNamespace(tier=tier, views=views, prepared=p)


def _forbidden_everywhere(p: Any) -> dict[int, str]:
    """Objects no view may reach, by identity: the truth, its flags and batches, the raw log, the run."""
    truth, transcript = p.truth, p.transcript
    named = {id(truth): "GroundTruth", id(truth.member_flags): "member flags", id(truth.client_batches): "client batches",
             id(transcript): "Transcript", id(transcript.provider_log): "the provider's log",
             id(p.fed): "the federation", id(p.built): "the run's plan", id(p.built.method): "the live Method"}
    named.update({id(batch): "a client batch" for batch in truth.client_batches.values()})
    named.update({id(c): "a canary with its secret" for c in truth.canaries})
    return named


FORBIDDEN_TYPES = (GroundTruth, Transcript, ViewBuilder, Method, ClientData, fl.Federation, runner.Plan, runner.Prepared)


@pytest.mark.parametrize("vantage", VANTAGES)
def test_a_view_reaches_only_what_its_tier_and_vantage_grant(trained, vantage):
    view = trained.views.for_attack(Probe(vantage))
    assert view.base_model.task is not None  # loads the lazy base model, so the walk also covers it
    found = reachable(view)
    forbidden = _forbidden_everywhere(trained.prepared)
    leaks = [forbidden[id(o)] for o in found if id(o) in forbidden]
    leaks += [type(o).__name__ for o in found if isinstance(o, FORBIDDEN_TYPES)]
    if vantage != "provider":
        leaks += ["a provider log record" for o in found if isinstance(o, ProviderRecord)][:1]
    if trained.tier in CLOSED:
        leaks += [f"{type(o).__name__} (weights)" for o in found if isinstance(o, (nn.Module, OpenModel))]
        leaks += ["a tensor that takes gradients" for o in found
                  if isinstance(o, torch.Tensor) and (o.requires_grad or o.grad is not None)][:1]
    else:  # control: the walk does reach the weights where the tier grants them
        assert any(isinstance(o, nn.Parameter) for o in found)
    assert not leaks, sorted(set(leaks))


@pytest.mark.parametrize("vantage", ["external", "participant", "server"])
def test_closed_tier_handles_refuse_weights_gradients_and_state_loading(trained, vantage):
    if trained.tier not in CLOSED:
        pytest.skip("open tiers grant weights")
    view = trained.views.for_attack(Probe(vantage))
    assert view.train_shadow is None
    for handle in (view.final_model, view.base_model):
        assert not hasattr(handle, "__dict__") and not hasattr(handle, "_inner") and not hasattr(handle, "log")
        state = torch.zeros(view.layout.num_trainable)
        for name, args in (("weights", ()), ("module", ()), ("hidden_states", (view.candidates[:1],)),
                           ("gradients", (view.candidates[:1],)), ("loss_at", (state, view.candidates[:1]))):
            with pytest.raises(TierAccessError):
                getattr(handle, name)(*args)


def test_closed_tier_queries_land_in_the_provider_log_only_the_provider_sees(trained):
    if trained.tier != "gray-box":
        pytest.skip("gray-box grants logits")
    log = trained.prepared.transcript.provider_log
    before = len(log)
    view = trained.views.for_attack(Probe("external"))
    view.final_model.example_losses(view.candidates[:3])
    assert len(log) == before + 3 and view.provider_log == []
    assert len(trained.views.for_attack(Probe("provider")).provider_log) == before + 3


# --- attacks a tier does not grant are refused before training ------------------------------------
def _rows_by_attack(rows) -> dict[str, list]:
    out: dict[str, list] = {}
    for row in rows:
        out.setdefault(row.attack, []).append(row)
    return out


@pytest.mark.parametrize("tier", CLOSED)
def test_weight_and_gradient_attacks_are_incompatible_at_closed_tiers(tmp_path, monkeypatch, tier):
    attacks = ["mia-gradient", "mia-participant", "mia-generation"]
    scenario = make_scenario(tmp_path, tier=tier, method=METHOD_OF[tier], attacks=attacks,
                             federation={**TINY, "rounds": 1})
    built = plan(scenario)  # no training: the refusal is decided here
    refused = dict(built.refused)
    assert set(refused) == {"mia-gradient", "mia-participant"}
    assert "gradients" in refused["mia-gradient"] and tier in refused["mia-gradient"]
    assert "weights" in refused["mia-participant"]
    assert [a.name for a in built.attacks] == ["mia-generation"]

    def must_not_run(self, view, rng):
        raise AssertionError(f"{self.name} ran although {tier} does not grant its access")

    for name in ("mia-gradient", "mia-participant"):
        monkeypatch.setattr(ATTACKS.get(name), "run", must_not_run)
    rows = _rows_by_attack(execute(scenario, 0))
    for name in ("mia-gradient", "mia-participant"):
        (row,) = rows[name]
        assert (row.status, row.metric, row.value) == ("incompatible", "run", None)
        assert row.error == refused[name]
    assert all(r.status == "ok" for r in rows["mia-generation"] + rows["none"])  # the run still measures
    assert any(r.metric.startswith("mia.") for r in rows["mia-generation"])


def test_open_tiers_grant_what_weight_attacks_need(tmp_path):
    attacks = ["mia-gradient", "mia-participant", "inversion-tokens", "mia-lira"]
    built = plan(make_scenario(tmp_path, tier="open-weight", method="fft", attacks=attacks, federation=TINY))
    assert built.refused == [] and [a.name for a in built.attacks] == attacks


def test_a_refused_training_attack_makes_the_whole_run_incompatible(tmp_path, monkeypatch):
    """A poisoning attack defines its run: without it training would measure something else."""
    monkeypatch.setattr(ATTACKS.get("poison-labelflip"), "access", frozenset({Access.WEIGHTS}))
    scenario = make_scenario(tmp_path, tier="gray-box", method="provider-tuning", attacks=["poison-labelflip"],
                             federation=TINY)
    monkeypatch.setattr(fl, "run", lambda *a: pytest.fail("trained although the run is incompatible"))
    (row,) = execute(scenario, 0)
    assert row.status == "incompatible" and "weights" in row.error and "gray-box" in row.error


def test_every_registered_attack_declares_its_access():
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        declared = next(c for c in cls.__mro__ if "access" in vars(c))
        assert declared.__name__ != "Attack", f"{name} does not declare the access it needs"
        assert all(isinstance(a, Access) for a in cls.access)
