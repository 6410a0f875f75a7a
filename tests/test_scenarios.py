"""Every shipped scenario runs (parametrized in conftest.py, marked by its components)."""

from bench.engine.runner import execute


def test_scenario_runs(scenario_case):
    scenario = scenario_case
    for seed in scenario.seeds[:1]:
        rows = execute(scenario, seed)
        statuses = {r.status for r in rows}
        assert statuses <= {"ok", "incompatible"}, [r.error for r in rows if r.status == "failed"]
        if statuses == {"ok"}:
            names = {r.metric for r in rows}
            assert any(n.startswith("utility.") for n in names) and "cost.wall_s" in names
