"""Presets: named overlays that resize loaded scenarios (``--preset cpu-small`` / ``--preset gpu``).

A preset is a small mapping deep-merged over each scenario's YAML entry, after which the scenario is
rebuilt and validated exactly as if the file had said it (so its hash, and therefore resuming,
distinguishes preset sizes). Keys under ``federation`` scale the grid; ``model`` swaps the zoo model;
``scale`` entries multiply a federation field instead of setting it; ``only_methods`` keeps a subset.

- ``cpu-small`` (default): the scenario files as written, so the overlay is empty. Table 4's files are
  sized for meaning first (issue 15): tiny zoo models in a regime where every method learns its task
  (4 clients, 10 rounds x 5 Adam steps of batch 4, 16 members and 250 never-trained records per
  client, 1,000 non-members per membership cell, 5 seeds). Shrinking them (fewer rounds, members or
  non-members) is what made the earlier table unreadable: models at chance, low-FPR figures that
  resolved nothing; a preset that trims them must say which figure it gives up.
- ``gpu``: one GPU and a Hugging Face model of 0.5B-1.5B parameters (``TIERBENCH_GPU_MODEL``: a hub
  name or a local directory; default ``Qwen/Qwen2.5-0.5B``), 4x the data per client, 5x the rounds,
  10 clients, 64-token records, bfloat16 weights, ``device: cuda``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

from bench.api.errors import UserError
from bench.api.vocabulary import JsonObject
from bench.spec.scenario import Scenario, build, merge

DEFAULT_PRESET = "cpu-small"
GPU_MODEL = "Qwen/Qwen2.5-0.5B"


def _gpu() -> JsonObject:
    return {
        "model": {"name": "hf", "params": {"path": os.environ.get("TIERBENCH_GPU_MODEL", GPU_MODEL), "dtype": "bfloat16"}},
        "device": "cuda",
        "federation": {"clients": 10, "clients_per_round": 10},
        "scale": {"examples_per_client": 4, "rounds": 5},
        "task_params": {"max_length": 64},
    }


PRESETS: dict[str, Callable[[], JsonObject]] = {"cpu-small": dict, "gpu": _gpu}


def names() -> list[str]:
    return sorted(PRESETS)


def overlay(name: str) -> JsonObject:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; allowed: {', '.join(names())}", key="--preset")
    return PRESETS[name]()


def _entry(scenario: Scenario, over: JsonObject) -> JsonObject:
    over = copy.deepcopy(over)
    scale = over.pop("scale", {})
    task_params = over.pop("task_params", {})
    raw = copy.deepcopy(scenario.raw or {})
    if "model" in over:  # a preset that swaps the model replaces its params: zoo sizes mean nothing to an hf model
        raw.pop("model", None)
    entry = merge(raw, over)
    federation = entry.setdefault("federation", {})
    for key, factor in scale.items():
        federation[key] = int(round(getattr(scenario.federation, key) * factor))
    if task_params:
        task = entry["task"] if isinstance(entry["task"], dict) else {"name": entry["task"]}
        task["params"] = {**(task.get("params") or {}), **task_params}
        entry["task"] = task
    return entry


def apply(scenarios: list[Scenario], name: str = DEFAULT_PRESET) -> list[Scenario]:
    """The scenarios resized by preset ``name`` (unchanged objects when its overlay is empty)."""
    over = overlay(name)
    if not over:
        return scenarios
    out = []
    for scenario in scenarios:
        entry = _entry(scenario, over)
        try:
            out.append(build(entry, f"{scenario.name}@{name}", scenario.file))
        except UserError as error:  # the file was valid: say that the preset's sizes broke it
            raise UserError(f"{error} (with --preset {name})") from None
    return out


def runnable(scenarios: list[Scenario]) -> tuple[list[Scenario], list[str]]:
    """(scenarios this machine can run, a message per skipped one): ``device: cuda`` needs a GPU."""
    import torch

    if torch.cuda.is_available():
        return scenarios, []
    kept = [s for s in scenarios if not s.device.startswith("cuda")]
    skipped = [f"skipped {s.name}: it needs a CUDA GPU (device: {s.device}) and this machine has none"
               for s in scenarios if s.device.startswith("cuda")]
    return kept, skipped
