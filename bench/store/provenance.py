"""Where a result came from: git commit (dirty or not), package versions, device, peak memory, and the
resolved scenario (every component's parameters, defaults included) that a run stores for ``report``."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bench.api.numerics import cpu_kernels
from bench.api.vocabulary import JsonObject, JsonValue

if TYPE_CHECKING:  # named in annotations only
    from bench.spec.scenario import Component, Scenario

PACKAGES = ("torch", "transformers", "peft", "opacus", "tenseal", "cryptography", "bitsandbytes")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# What makes a result: the code and the scenario files. Outputs (results/, caches) do not count, so
# an untracked file there does not mark a run dirty; an untracked module in bench/ does.
PROJECT_PATHS = ("bench", "attacks", "defenses", "scenarios", "pyproject.toml")


def git_state(root: Path) -> str:
    """``<commit>`` or ``<commit>-dirty`` when project files are modified, staged or untracked;
    ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5)
        top = [f":/{path}" for path in PROJECT_PATHS]  # ":/" = from the checkout's top, wherever root is
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *top],
                               cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0 or not out.stdout.strip():
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


@functools.cache
def git_commit() -> str:
    return git_state(PROJECT_ROOT)


@functools.cache
def package_versions() -> str:
    """Python and the packages that move a figure, then the CPU kernel path (``cpu_kernels=AVX2``): the same
    code and packages sum in another order on another path (``bench.api.numerics``)."""
    found = [f"python={sys.version.split()[0]}"]
    for name in PACKAGES:
        try:
            found.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    found.append(f"cpu_kernels={cpu_kernels()}")
    return " ".join(found)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plain(value: object) -> JsonValue:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


def _component(component: Component) -> JsonObject:
    config = component.config
    params = _plain(config) if dataclasses.is_dataclass(config) else dict(component.params or {})
    return {"name": component.name, "params": params}


def scenario_record(scenario: Scenario) -> JsonObject:
    """The resolved scenario as plain JSON: what ``report`` knows about a run without loading any code.

    Component params include their defaults (the bound config), so a later change of a default does
    not change what the stored run says it ran with.
    """
    record = {
        "name": scenario.name, "file": scenario.file, "hash": scenario.hash, "device": scenario.device,
        **{part: _component(getattr(scenario, part)) for part in ("tier", "model", "task", "method")},
        "federation": _plain(scenario.federation),
        "attacks": [_component(a) for a in scenario.attacks],
        "defenses": [_component(d) for d in scenario.defenses],
    }
    from bench.api.registry import loaded_plugins

    if loaded_plugins:  # code from outside the project: name it, since git_commit cannot cover it
        record["plugins"] = list(loaded_plugins)
    return json.loads(json.dumps(record, default=str))  # tuples -> lists, paths -> strings: JSON-safe
