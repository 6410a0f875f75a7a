"""Every malformed scenario: exit 2, the file and the key named, what is allowed, no traceback, fast.

One table, run through the CLI entry point in-process (``bench.cli.main``), plus a few cases in a real
subprocess for the process exit code. A case is (content, key, text): ``content`` is the scenario (a
dict dumped as YAML, a YAML string, or bytes); ``key`` must appear in stderr (None where the error is
about the whole file: it cannot parse); ``text`` must appear too (what is wrong or what is allowed).
Data files a case needs are written beside the scenario (``DATA``), so relative paths exercise the
rule that they resolve from the scenario file's folder.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import scenario_dict

ROOT = Path(__file__).resolve().parents[1]


def _bomb(levels: int = 9) -> str:
    """A "billion laughs": 9 levels of 9 aliases each expand to 9**9 strings."""
    parts = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        parts.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


def _yaml(**overrides) -> str:
    return yaml.safe_dump(scenario_dict(**overrides))


def _local(**params) -> dict:
    return {"name": "local-file", "params": {"path": "data.csv", "max_length": 32, **params}}


def _grid(matrix, exclude=None) -> dict:
    document = dict(scenario_dict(), matrix=matrix)
    if exclude is not None:
        document["exclude"] = exclude
    return document


CSV = "text,label\n" + "".join(f"note {i},{'a' if i % 2 else 'b'}\n" for i in range(20))
ONE_LABEL_CSV = "text,label\n" + "".join(f"note {i},a\n" for i in range(20))
PREFS = "".join(f'{{"q": "question {i}", "good": "yes", "bad": "no"}}\n' for i in range(10))
ALPACA = "[" + ",".join('{"instruction": "Add", "input": "", "output": "5"}' for _ in range(10)) + "]"
DATA = {"data.csv": CSV, "one.csv": ONE_LABEL_CSV, "prefs.jsonl": PREFS, "alpaca.json": ALPACA,
        "notes.txt": "hello\n", "dict.json": '{"text": "a"}', "broken.jsonl": '{"text": "a"}\n{"text": \n'}

BASE_YAML = _yaml()

CASES: dict[str, tuple[object, str | None, str]] = {
    # --- the 15 cases tests/test_scenario.py had -------------------------------------------------
    "invalid_yaml": ("tier: [open-weight\n", None, "invalid YAML"),
    "unknown_top_key": (dict(scenario_dict(), colour="red"), "colour", "allowed:"),
    "unknown_federation_key": (scenario_dict(federation={"clinets": 3}), "federation.clinets", "allowed:"),
    "wrong_type": (scenario_dict(federation={"rounds": "many"}), "federation.rounds", "expected an integer"),
    "unknown_method": (scenario_dict(method="lorra"), "method.name", "allowed:"),
    "unknown_attack": (scenario_dict(attacks=["mia-magic"]), "attacks[0].name", "allowed:"),
    "zero_clients": (scenario_dict(federation={"clients": 0, "clients_per_round": 0}), "federation.clients", "at least 1"),
    "negative_clients": (scenario_dict(federation={"clients": -2}), "federation.clients", "at least 1"),
    "too_many_per_round": (scenario_dict(federation={"clients": 2, "clients_per_round": 3}),
                           "federation.clients_per_round", "exceeds clients"),
    "missing_include": ({"include": "nowhere.yaml", "tier": "open-weight"}, "include", "not found"),
    "empty_grid": (dict(scenario_dict(), matrix={"method": ["fft"]}, exclude=[{"method": "fft"}]), "matrix", "empty"),
    "unknown_method_param": (scenario_dict(method={"name": "lora", "params": {"rnak": 2}}), "method.params.rnak", "allowed:"),
    "bad_protocol": (scenario_dict(federation={"protocol": "fedprox"}), "federation.protocol", "fedavg"),
    "missing_tier": ({k: v for k, v in scenario_dict().items() if k != "tier"}, "tier", "missing required key"),
    "top_level_list": ("- a\n- b\n", None, "mapping at the top level"),
    # --- file-level limits -------------------------------------------------------------------------
    "non_utf8": (BASE_YAML.encode().replace(b"name: unit", b"name: caf\xe9"), None, "not UTF-8"),
    "file_too_big": (BASE_YAML + "# " + "x" * (1 << 20) + "\n", None, "at most 1048576 bytes"),
    "alias_bomb_in_tags": (BASE_YAML + f"tags: {_bomb()}\n", "tags", "alias"),
    "alias_bomb_in_description": (BASE_YAML + f"description: {_bomb()}\n", "description", "alias"),
    "recursive_alias": (BASE_YAML + "tags: &loop [*loop]\n", "tags", "alias"),
    "deep_brackets": (BASE_YAML + "tags: " + "[" * 3000 + "]" * 3000 + "\n", None, "nest deeper"),
    "deep_indentation": (BASE_YAML + "tags:\n" + "".join(" " * (2 * i) + "-\n" for i in range(1, 300)), None,
                         "indented"),
    "duplicate_key": (BASE_YAML + "method: fft\n", "method", "duplicate key"),
    "duplicate_nested_key": (BASE_YAML.replace("  rounds: 2\n", "  rounds: 2\n  rounds: 3\n"), "rounds", "duplicate key"),
    "empty_file": ("", None, "mapping at the top level"),
    "non_string_top_key": (BASE_YAML + "1: x\n", "1", "unknown key"),
    # --- top-level keys and their types ------------------------------------------------------------
    "federation_int": (dict(scenario_dict(), federation=5), "federation", "mapping"),
    "federation_list": (dict(scenario_dict(), federation=[1, 2]), "federation", "mapping"),
    "include_directory": (dict(scenario_dict(), include="."), "include", "not a file"),
    "include_not_string": (dict(scenario_dict(), include=["a.yaml"]), "include", "file path"),
    "include_self": (dict(scenario_dict(), include="case.yaml"), "include", "cycle"),
    "name_list": (dict(scenario_dict(), name=["a", "b"]), "name", "string"),
    "name_empty": (dict(scenario_dict(), name=""), "name", "string"),
    "description_mapping": (dict(scenario_dict(), description={"a": 1}), "description", "expected a string"),
    "tags_not_strings": (dict(scenario_dict(), tags=[1, 2]), "tags[0]", "expected a string"),
    "tags_string": (dict(scenario_dict(), tags="fast"), "tags", "expected a list"),
    "device_tpu": (dict(scenario_dict(), device="tpu"), "device", "allowed: auto, cpu, cuda"),
    "device_gpu": (dict(scenario_dict(), device="gpu"), "device", "allowed: auto, cpu, cuda"),
    "device_number": (dict(scenario_dict(), device=0), "device", "expected a string"),
    "dtype_float128": (scenario_dict(model={"name": "hf", "params": {"path": "Qwen/Qwen2.5-0.5B", "dtype": "float128"}}),
                       "model.params.dtype", "bfloat16"),
    "seeds_huge": (scenario_dict(seeds=1000000000), "seeds", "1..1000"),
    "seeds_zero": (scenario_dict(seeds=0), "seeds", "1..1000"),
    "seeds_negative": (scenario_dict(seeds=[0, -1]), "seeds", "0..4294967295"),
    "seeds_duplicate": (scenario_dict(seeds=[1, 2, 1]), "seeds", "listed twice"),
    "seeds_empty_list": (scenario_dict(seeds=[]), "seeds", "1..1000"),
    "seeds_bool": (scenario_dict(seeds=True), "seeds", "expected"),
    "seeds_too_many": (scenario_dict(seeds=list(range(1001))), "seeds", "1..1000"),
    # --- federation ranges -------------------------------------------------------------------------
    "examples_1e8_string": (BASE_YAML.replace("examples_per_client: 12", "examples_per_client: 1e8"),
                            "federation.examples_per_client", "expected an integer"),
    "examples_1e8": (scenario_dict(federation={"examples_per_client": 100_000_000}), "federation.examples_per_client",
                     "at most"),
    "examples_total": (scenario_dict(federation={"clients": 100, "clients_per_round": 10, "examples_per_client": 20_000}),
                       "federation.examples_per_client", "at most 1000000"),
    "clients_huge": (scenario_dict(federation={"clients": 20_000}), "federation.clients", "at most 10000"),
    "rounds_huge": (scenario_dict(federation={"rounds": 10**6}), "federation.rounds", "at most"),
    "rounds_overflow": (scenario_dict(federation={"rounds": 10**30}), "federation.rounds", "out of range"),
    "lr_nan": (BASE_YAML.replace("lr: 0.005", "lr: .nan"), "federation.lr", "NaN"),
    "lr_inf": (BASE_YAML.replace("lr: 0.005", "lr: .inf"), "federation.lr", "finite"),
    "lr_negative": (scenario_dict(federation={"lr": -0.1}), "federation.lr", "positive"),
    "member_fraction_one": (scenario_dict(federation={"member_fraction": 1.0}), "federation.member_fraction", "between"),
    "mia_candidates_one": (scenario_dict(federation={"mia_candidates": 1}), "federation.mia_candidates", "or 2.."),
    "federation_mixed_keys": (BASE_YAML.replace("  rounds: 2\n", "  rounds: 2\n  1: 2\n"), "federation.1", "allowed:"),
    "bad_optimizer": (scenario_dict(federation={"optimizer": "lion"}), "federation.optimizer", "adamw"),
    # --- components --------------------------------------------------------------------------------
    "method_list": (scenario_dict(method=["lora"]), "method", "mapping with 'name'"),
    "method_extra_key": (scenario_dict(method={"name": "lora", "parms": {}}), "method.parms", "allowed: name, params"),
    "method_params_list": (scenario_dict(method={"name": "lora", "params": [1]}), "method.params", "mapping"),
    "attacks_not_list": (scenario_dict(attacks="mia-loss"), "attacks", "expected a list"),
    "attack_twice": (scenario_dict(attacks=["mia-loss", "mia-loss"]), "attacks", "listed twice"),
    "local_objective": (scenario_dict(task=_local(objective="ranking")), "task.params", "objective must be one of"),
    "local_limit_negative": (scenario_dict(task=_local(limit=-5)), "task.params.limit", "positive"),
    # --- grids ---------------------------------------------------------------------------------------
    "matrix_key_typo": (_grid({"federaton.rounds": [1, 2]}), "matrix.federaton.rounds", "allowed:"),
    "matrix_federation_typo": (_grid({"federation.roundz": [1, 2]}), "matrix.federation.roundz", "allowed:"),
    "matrix_component_subkey": (_grid({"method.rank": [2, 4]}), "matrix.method.rank", "method.params.KEY"),
    "matrix_scalar_subkey": (_grid({"seeds.count": [1, 2]}), "matrix.seeds.count", "no sub-keys"),
    "matrix_include": (_grid({"include": ["a.yaml"]}), "matrix.include", "allowed:"),
    "matrix_not_mapping": (dict(scenario_dict(), matrix=[1, 2]), "matrix", "non-empty mapping"),
    "matrix_value_not_list": (_grid({"federation.rounds": 3}), "matrix.federation.rounds", "non-empty list"),
    "matrix_duplicate_value": (_grid({"federation.rounds": [2, 3, 2]}), "matrix.federation.rounds", "listed twice"),
    "matrix_too_big": (_grid({"federation.rounds": list(range(1, 101)), "federation.local_steps": list(range(1, 102))}),
                       "matrix", "at most 10000"),
    "matrix_bad_param": (_grid({"method": [{"name": "lora", "params": {"rnak": 2}}]}), "method.params.rnak", "allowed:"),
    "matrix_bad_value": (_grid({"federation.rounds": [2, "x"]}), "federation.rounds", "expected an integer"),
    "exclude_matches_nothing": (_grid({"method": ["fft", "lora"]}, [{"method": "qlora"}]), "exclude[0]", "matches no cell"),
    "exclude_unknown_key": (_grid({"method": ["fft", "lora"]}, [{"methd": "fft"}]), "exclude[0].methd", "not a matrix key"),
    "exclude_not_list": (_grid({"method": ["fft", "lora"]}, {"method": "fft"}), "exclude", "list of mappings"),
    "exclude_empty_rule": (_grid({"method": ["fft", "lora"]}, [{}]), "exclude[0]", "non-empty mapping"),
    "exclude_without_matrix": (dict(scenario_dict(), exclude=[{"method": "fft"}]), "exclude", "no matrix"),
    # --- paths and columns, checked at validate -----------------------------------------------------
    "hf_path_missing": (scenario_dict(model={"name": "hf", "params": {"path": "./no-such-model"}}), "model.params.path",
                        "does not exist"),
    "hf_path_is_file": (scenario_dict(model={"name": "hf", "params": {"path": "data.csv"}}), "model.params.path",
                        "not a model directory"),
    "hf_path_without_config": (scenario_dict(model={"name": "hf", "params": {"path": "./empty-model"}}),
                               "model.params.path", "has no config.json"),
    "hf_path_in_a_local_folder": (scenario_dict(model={"name": "hf", "params": {"path": "empty-model/mine"}}),
                                  "model.params.path", "does not exist"),
    "csv_missing": (scenario_dict(task=_local(path="missing.csv")), "task.params.path", "does not exist"),
    "csv_missing_column": (scenario_dict(task=_local(text_column="body")), "task.params.text_column", "its columns: label, text"),
    "csv_missing_label_column": (scenario_dict(task=_local(label_column="y")), "task.params.label_column", "its columns"),
    "csv_one_label": (scenario_dict(task=_local(path="one.csv")), "task.params.label_column", "at least 2"),
    "preference_missing_columns": (scenario_dict(task=_local(path="prefs.jsonl", objective="preference")),
                                   "task.params.prompt_column", "its columns: bad, good, q"),
    "instruction_missing_field": (scenario_dict(task=_local(path="alpaca.json", objective="instruction",
                                                            response_column="answer")),
                                  "task.params.response_column", "its columns"),
    "unsupported_data_type": (scenario_dict(task=_local(path="notes.txt")), "task.params.path", "allowed: .csv"),
    "data_path_is_directory": (scenario_dict(task=_local(path=".")), "task.params.path", "directory"),
    "json_not_a_list": (scenario_dict(task=_local(path="dict.json")), "task.params.path", "list of records"),
    "jsonl_corrupt": (scenario_dict(task=_local(path="broken.jsonl", objective="language")), "task.params.path",
                      "cannot parse"),
    "max_length_beyond_context": (scenario_dict(task={"name": "synthetic-clinical", "params": {"max_length": 256}}),
                                  "task.params.max_length", "allowed: 1..128"),
    "hf_dataset_dir_missing": (scenario_dict(task={"name": "hf-dataset", "params": {"path": "./no-such-dataset"}}),
                               "task.params.path", "does not exist"),
}


def _write(tmp_path: Path, case: str) -> Path:
    for name, text in DATA.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "empty-model").mkdir(exist_ok=True)
    content = CASES[case][0]
    path = tmp_path / "case.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def test_the_table_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_exits_2_naming_file_and_key(tmp_path, capsys, case, monkeypatch):
    from bench.cli import main

    monkeypatch.chdir(tmp_path.parent)  # relative data paths must be found from the scenario's folder, not here
    path = _write(tmp_path, case)
    _, key, text = CASES[case]
    started = time.perf_counter()
    code = main(["validate", str(path)])
    elapsed = time.perf_counter() - started
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "Traceback" not in captured.err + captured.out
    assert str(path) in captured.err
    if key is not None:
        assert key in captured.err
    assert text in captured.err
    assert elapsed < 5, f"{case} took {elapsed:.1f} s"


def test_a_folder_without_scenarios_is_an_error(tmp_path, capsys):
    from bench.cli import main

    (tmp_path / "notes.txt").write_text("no scenarios here")
    assert main(["validate", str(tmp_path)]) == 2
    assert f"no scenario files (*.yaml) in {tmp_path}" in capsys.readouterr().err
    assert main(["run", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["csv_missing_column", "hf_path_missing", "max_length_beyond_context", "matrix_key_typo"])
def test_run_refuses_before_any_run(tmp_path, capsys, case):
    from bench.cli import main

    path = _write(tmp_path, case)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert str(path) in captured.err and CASES[case][1] in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "out" / "results.jsonl").exists()


@pytest.mark.parametrize("case", ["non_utf8", "federation_int", "alias_bomb_in_description", "examples_1e8",
                                  "csv_missing"])
def test_process_exits_2_without_traceback(tmp_path, case):
    path = _write(tmp_path, case)
    # The bound is generous: starting Python and importing torch takes seconds on a loaded machine.
    done = subprocess.run([sys.executable, "-m", "bench", "validate", str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and str(path) in done.stderr
    assert CASES[case][1] is None or CASES[case][1] in done.stderr


@pytest.mark.parametrize("count", ["0", "1000000000", "-3", "many"])
def test_run_seeds_option_is_bounded_like_the_files_seeds(capsys, count):
    """``run --seeds N`` is a count in 1..1000, as ``seeds:`` in a file; anything else exits 2 before loading."""
    from bench.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["run", "scenarios/smoke.yaml", "--seeds", count])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--seeds" in err and "Traceback" not in err
