"""Shared fixtures, and scenario files exposed as parametrized tests with markers.

Every scenario in ``scenarios/*.yaml`` (grids expanded) becomes a case of ``test_scenario_runs``,
marked by its tier, method, attacks and defenses (hyphens become underscores), so that
``pytest -m lora`` or ``pytest -k open-weight`` selects scenarios. Files tagged ``ci`` run in the
default suite; the others are marked ``slow``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import bench  # noqa: F401  pins the CPU kernel path before any test touches a tensor (bench.api.numerics)

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TIERBENCH_CACHE", str(ROOT / ".cache" / "tierbench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def marker_name(name: str) -> str:
    return name.replace("-", "_").replace(".", "_")


def scenario_cases() -> list:
    from bench.spec.scenario import load

    cases = []
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        for scenario in load(path):
            names = [scenario.tier.name, scenario.method.name] + [a.name for a in scenario.attacks] + [
                d.name for d in scenario.defenses]
            marks = [getattr(pytest.mark, marker_name(n)) for n in names] + [pytest.mark.scenario]
            if "ci" not in (scenario.raw or {}).get("tags", []):
                marks.append(pytest.mark.slow)
            cases.append(pytest.param(scenario, id=scenario.name, marks=marks))
    return cases


def pytest_configure(config: pytest.Config) -> None:
    from bench.api.registry import ATTACKS, DEFENSES, METHODS, TIERS

    for registry in (TIERS, METHODS, ATTACKS, DEFENSES):
        for name in registry.names():
            config.addinivalue_line("markers", f"{marker_name(name)}: scenarios using {registry.kind} {name}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scenario_case" in metafunc.fixturenames:
        metafunc.parametrize("scenario_case", scenario_cases())


@pytest.fixture(autouse=True)
def _quiet_libraries():
    from bench.engine.sweep import quiet_libraries

    quiet_libraries()
