"""Contract: every registered attack and defense runs on a smoke scenario of a task it applies to."""

from __future__ import annotations

import pytest

from bench.api.registry import ATTACKS, DEFENSES
from bench.engine.runner import execute
from tests.helpers import make_scenario

TINY = {"clients": 3, "clients_per_round": 3, "rounds": 1, "local_steps": 1, "batch_size": 4,
        "examples_per_client": 8, "eval_examples": 16}
SETTINGS = {  # task kind -> (task, method) that trains it
    "classification": ({"name": "synthetic-clinical", "params": {"num_classes": 3, "max_length": 32}}, "lora"),
    "language": ({"name": "synthetic-clinical", "params": {"num_classes": 3, "max_length": 32, "objective": "language",
                                                           "canary_fraction": 0.1, "canary_space": 20}}, "lora"),
    "instruction": ({"name": "synthetic-instructions", "params": {"max_length": 48}}, "instruction-tuning"),
    "preference": ({"name": "synthetic-preferences", "params": {"max_length": 48}}, "rlhf"),
}
FAST_PARAMS = {"mia-lira": {"shadows": 4}, "inversion-optim": {"steps": 5}, "poison-labelflip": {"num_classes": 3},
               "extract-generate": {"samples": 4, "top": 2}, "pii-extract": {"samples": 4}, "pii-infer-kd": {"steps": 3, "choices": 2},
               "inversion-learned": {"samples": 16, "epochs": 2, "batches": 4, "width": 16, "token_width": 4}}
DEFENSE_PARAMS = {"dp-local": {"noise_multiplier": 1.0}, "dp-central": {"noise_multiplier": 1.0},
                  # 3 clients per round: Krum's n >= 2f + 3 holds for f = 0; trim one client per end
                  "robust-krum": {"f": 0}, "robust-trimmed": {"trim_count": 1}}
VANTAGE_TIER = {"provider": "gray-box"}
STRUCTURE_METHOD = {"inversion-trap": "adapter"}  # attacks that need a method's structure (the trap: adapters)


def _protocol(component) -> dict:
    """The first registered protocol whose messages the component acts on (fedavg for parameter updates)."""
    from bench.api.registry import PROTOCOLS

    return {"protocol": next(n for n in PROTOCOLS.names() if PROTOCOLS.get(n).channel in component.channels)}


def _kind(component) -> str:
    kinds = getattr(component, "task_kinds", frozenset(SETTINGS))
    return next(k for k in SETTINGS if k in kinds)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_runs_and_is_scored(tmp_path, name):
    cls = ATTACKS.get(name)
    task, method = SETTINGS[_kind(cls)]
    tier = VANTAGE_TIER.get(cls.vantage, "open-weight")
    if tier == "gray-box":
        method = "provider-tuning"
    method = STRUCTURE_METHOD.get(name, method)
    params = dict(FAST_PARAMS.get(name, {}))
    if cls.changes_training and not cls.tampers_broadcast:  # malicious clients; a malicious server has no fraction
        params.setdefault("fraction", 0.34)
    scenario = make_scenario(tmp_path, task=task, method=method, tier=tier, federation={**TINY, **_protocol(cls)},
                             attacks=[{"name": name, "params": params}])
    rows = execute(scenario, 0)
    failures = [r.error for r in rows if r.status not in ("ok",)]
    assert not failures, failures
    assert any(r.attack == name and r.value is not None for r in rows), f"{name} produced no metric"


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_runs(tmp_path, name):
    federation = {**TINY, **_protocol(DEFENSES.get(name))}
    scenario = make_scenario(tmp_path, federation=federation, defenses=[{"name": name, "params": DEFENSE_PARAMS.get(name, {})}])
    rows = execute(scenario, 0)
    assert {r.status for r in rows} == {"ok"}, [r.error for r in rows]
    assert "utility.accuracy" in {r.metric for r in rows}
