import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.api.errors import UserError
from bench.spec.scenario import load
from tests.helpers import scenario_dict, write_scenario

ROOT = Path(__file__).resolve().parents[1]


def test_single_scenario_binds_configs(tmp_path):
    scenario = load(write_scenario(tmp_path, scenario_dict(method={"name": "lora", "params": {"rank": 4}})))[0]
    assert scenario.method.config.rank == 4
    assert scenario.federation.clients == 3
    assert scenario.seeds == (0,)


def test_grid_expands_with_exclude_and_include(tmp_path):
    base = scenario_dict()
    write_scenario(tmp_path, base, "base.yaml")
    grid = {"include": "base.yaml", "name": "grid", "federation": {"rounds": 3},
            "matrix": {"method": ["fft", "lora"], "federation.batch_size": [2, 4]},
            "exclude": [{"method": "fft", "federation.batch_size": 4}]}
    scenarios = load(write_scenario(tmp_path, grid, "grid.yaml"))
    assert len(scenarios) == 3
    assert {(s.method.name, s.federation.batch_size) for s in scenarios} == {("fft", 2), ("lora", 2), ("lora", 4)}
    assert all(s.federation.rounds == 3 and s.federation.clients == 3 for s in scenarios)
    assert len({s.hash for s in scenarios}) == 3


def test_exclude_by_bare_name_matches_components_with_params(tmp_path):
    grid = dict(scenario_dict(), matrix={
        "task": [{"name": "synthetic-clinical", "params": {"num_classes": 3}}, {"name": "synthetic-instructions"}],
        "method": [{"name": "lora", "params": {"rank": 2}}, "fft"]},
        exclude=[{"task": "synthetic-instructions"}, {"method": "lora", "task": "synthetic-clinical"}],
        attacks=[{"name": "mia-lira", "params": {"shadows": 4}}])
    grid["matrix"]["attacks"] = [[{"name": "mia-lira", "params": {"shadows": 4}}], ["mia-loss"]]
    grid["exclude"].append({"attacks": ["mia-lira"]})
    scenarios = load(write_scenario(tmp_path, grid, "grid.yaml"))
    assert [(s.task.name, s.method.name) for s in scenarios] == [("synthetic-clinical", "fft")]
    assert "num_classes=3" in scenarios[0].name


def test_hash_ignores_seeds_and_name(tmp_path):
    a = load(write_scenario(tmp_path, scenario_dict(seeds=[0]), "a.yaml"))[0]
    b = load(write_scenario(tmp_path, scenario_dict(seeds=3, name="other"), "b.yaml"))[0]
    assert a.hash == b.hash and b.seeds == (0, 1, 2)


def test_every_shipped_scenario_file_loads():
    from bench.spec.scenario import load_many

    assert load_many([ROOT / "scenarios"])


MALFORMED = {
    "invalid_yaml": ("tier: [open-weight\n", "invalid YAML", None),
    "unknown_top_key": (dict(scenario_dict(), colour="red"), "colour", "colour"),
    "unknown_federation_key": (scenario_dict(federation={"clinets": 3}), "clinets", "federation.clinets"),
    "wrong_type": (scenario_dict(federation={"rounds": "many"}), "expected an integer", "federation.rounds"),
    "unknown_method": (scenario_dict(method="lorra"), "unknown method 'lorra'", "method.name"),
    "unknown_attack": (scenario_dict(attacks=["mia-magic"]), "unknown attack 'mia-magic'", "attacks[0].name"),
    "zero_clients": (scenario_dict(federation={"clients": 0, "clients_per_round": 0}), "at least 1", "federation"),
    "negative_clients": (scenario_dict(federation={"clients": -2}), "at least 1", "federation"),
    "too_many_per_round": (scenario_dict(federation={"clients": 2, "clients_per_round": 3}), "exceeds clients", "federation"),
    "missing_include": ({"include": "nowhere.yaml", "tier": "open-weight"}, "not found", None),
    "empty_grid": (dict(scenario_dict(), matrix={"method": ["fft"]}, exclude=[{"method": "fft"}]), "empty", "matrix"),
    "unknown_method_param": (scenario_dict(method={"name": "lora", "params": {"rnak": 2}}), "rnak", "method.params.rnak"),
    "bad_protocol": (scenario_dict(federation={"protocol": "fedprox"}), "fedprox", "federation.protocol"),
    "missing_tier": ({k: v for k, v in scenario_dict().items() if k != "tier"}, "tier", "tier"),
    "top_level_list": ("- a\n- b\n", "mapping", None),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_scenario_is_a_clean_user_error(tmp_path, case):
    content, expected, key = MALFORMED[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    with pytest.raises(UserError) as error:
        load(path)
    message = str(error.value)
    assert str(path) in message and expected in message
    if key:
        assert key in message


def _write_malformed(tmp_path, case):
    content = MALFORMED[case][0]
    path = tmp_path / f"{case}.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_returns_2_and_names_the_file_for_every_malformed_case(tmp_path, capsys, command):
    from bench.cli import main

    for case in sorted(MALFORMED):
        path = _write_malformed(tmp_path, case)
        extra = ["--out", str(tmp_path / "out"), "--quiet"] if command == "run" else []
        assert main([command, str(path), *extra]) == 2, case
        captured = capsys.readouterr()
        assert str(path) in captured.err and "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_process_exit_code_is_2_without_traceback(tmp_path):
    path = _write_malformed(tmp_path, "unknown_federation_key")
    done = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "federation.clinets" in done.stderr and str(path) in done.stderr


def test_a_preset_that_breaks_a_limit_names_the_preset(tmp_path):
    from bench.spec import presets
    from tests.helpers import scenario_dict as base

    big = load(write_scenario(tmp_path, base(federation={"examples_per_client": 60_000, "clients": 3})))
    with pytest.raises(UserError) as error:
        presets.apply(big, "gpu")  # 10 clients x 4 x 60,000 records is past the 1,000,000 cap
    message = str(error.value)
    assert "federation.examples_per_client" in message and "--preset gpu" in message and str(tmp_path) in message


def test_the_gpu_preset_replaces_the_zoo_model_params_it_swaps_out():
    """The zoo's sizes ('heads', 'layers') are not keys of the hf model the gpu preset swaps in."""
    from bench.spec.presets import apply
    from bench.spec.scenario import load_many

    scenarios = apply(load_many(["scenarios/table4-poisoning.yaml"]), "gpu")
    assert scenarios and {s.model.name for s in scenarios} == {"hf"}
