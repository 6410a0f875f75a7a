"""Small builders shared by tests (scenario dicts -> Scenario objects)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from bench.spec.scenario import load

BASE: dict[str, Any] = {
    "name": "unit",
    "tier": "open-weight",
    "model": "tiny-gpt2",
    "task": {"name": "synthetic-clinical", "params": {"num_classes": 3, "max_length": 40}},
    "method": "lora",
    "federation": {"clients": 3, "clients_per_round": 3, "rounds": 2, "local_steps": 2, "batch_size": 4,
                   "lr": 0.005, "examples_per_client": 12},
    "seeds": [0],
}


def scenario_dict(**overrides: Any) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict) and key == "federation":
            document[key].update(value)
        else:
            document[key] = value
    return document


def write_scenario(tmp_path: Path, document: dict[str, Any], name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return path


def make_scenario(tmp_path: Path, **overrides: Any):
    return load(write_scenario(tmp_path, scenario_dict(**overrides)))[0]
