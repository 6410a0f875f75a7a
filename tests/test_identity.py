"""One identity: a scenario's hash and training keys are digests of its bound, normalised configuration.

Resume (``(hash, seed)`` already stored) and the paired design (a poisoning run's clean twin found by
``clean_training_key``) both compare these digests, so two spellings of one configuration must agree
and any change of a value that the run reads must not.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

import bench.spec.scenario
from bench.api.errors import UserError
from bench.api.registry import ATTACKS, DEFENSES, METHODS, MODELS, TASKS, TIERS
from bench.spec.scenario import EXECUTION_ONLY, identity_path, load

PLAIN = """\
name: plain
description: the configuration as most files write it
tags: [ci]
tier: open-weight
model: tiny-gpt2
task: {name: synthetic-clinical, params: {num_classes: 3, max_length: 40}}
method: lora
attacks: [mia-loss, poison-labelflip]
defenses: [{name: dp-local, params: {noise_multiplier: 1.0}}]
federation: {clients: 3, clients_per_round: 3, rounds: 2, local_steps: 2, batch_size: 4, lr: 0.005,
             examples_per_client: 12}
seeds: [0]
"""

SPELLINGS = {
    "method as a mapping": PLAIN.replace("method: lora", "method: {name: lora}"),
    "method with a default filled, an int for a float": PLAIN.replace(
        "method: lora", "method: {name: lora, params: {rank: 8, alpha: 16}}"),
    "keys reordered, ints for floats": """\
seeds: [0]
federation: {examples_per_client: 12, lr: 0.005, batch_size: 4, local_steps: 2, rounds: 2,
             clients_per_round: 3, clients: 3, server_lr: 1, alpha: 0.5}
defenses: [{params: {max_grad_norm: 1, noise_multiplier: 1}, name: dp-local}]
attacks: [{name: mia-loss, params: {canaries: true}}, {name: poison-labelflip, params: {}}]
method: {params: {}, name: lora}
task: {params: {max_length: 40, num_classes: 3, canary_fraction: 0}, name: synthetic-clinical}
model: {name: tiny-gpt2, params: {hidden: 128}}
tier: {name: open-weight}
""",
    "other name, tags, description and seeds": PLAIN.replace("name: plain", "name: renamed").replace(
        "tags: [ci]", "tags: [slow, other]").replace("the configuration", "another line").replace(
        "seeds: [0]", "seeds: 3"),
    "defaults written out": PLAIN.replace(
        "lr: 0.005,", "lr: 0.005, optimizer: adam, protocol: fedavg, partition: iid, eval_examples: 128,"),
}


def _write(folder: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _one(folder: Path, text: str, name: str = "scenario.yaml"):
    (scenario,) = load(_write(folder, text, name))
    return scenario


def _keys(scenario) -> tuple[str, str, str]:
    return scenario.hash, scenario.training_key, scenario.clean_training_key


def test_spellings_of_one_configuration_have_one_identity(tmp_path):
    plain = _one(tmp_path, PLAIN, "plain.yaml")
    for label, text in SPELLINGS.items():
        assert _keys(_one(tmp_path, text, "spelled.yaml")) == _keys(plain), label


def test_an_included_base_equals_the_same_keys_inline(tmp_path):
    plain = _one(tmp_path, PLAIN, "plain.yaml")
    lines = PLAIN.splitlines(keepends=True)
    base = "".join(line for line in lines if line.startswith(("tier", "model", "task", "federation", "   ")))
    _write(tmp_path, base + "method: fft\n", "base.yaml")
    top = "include: base.yaml\n" + "".join(line for line in lines if line.startswith(("name", "method", "attacks",
                                                                                       "defenses", "seeds")))
    assert _keys(_one(tmp_path, top, "top.yaml")) == _keys(plain)


def test_a_grid_cell_equals_the_same_scenario_written_alone(tmp_path):
    plain = _one(tmp_path, PLAIN, "plain.yaml")
    grid = load(_write(tmp_path, PLAIN + "matrix: {method: [fft, {name: lora, params: {rank: 8}}]}\n", "grid.yaml"))
    cell = next(s for s in grid if s.method.name == "lora")
    assert "rank=8" in cell.name and _keys(cell) == _keys(plain)
    assert grid[0].hash != plain.hash  # fft: a different configuration


def test_defaults_filled_explicitly_equal_them_omitted(tmp_path):
    """Every field of every Config (federation included) written with its default value."""
    plain = _one(tmp_path, PLAIN, "plain.yaml")
    document = yaml.safe_load(PLAIN)
    for key in ("tier", "model", "task", "method"):
        document[key] = _with_defaults(getattr(plain, key))
    document["attacks"] = [_with_defaults(a) for a in plain.attacks]
    document["defenses"] = [_with_defaults(d) for d in plain.defenses]
    document["federation"] = dataclasses.asdict(plain.federation)
    document["device"] = "auto"
    explicit = _one(tmp_path, yaml.safe_dump(document), "explicit.yaml")
    assert _keys(explicit) == _keys(plain)


def _with_defaults(component) -> dict[str, Any]:
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(component.config).items()}
    return {"name": component.name, "params": params}


# --- every value the run reads is in the identity ---------------------------------------------------
SECTIONS = {  # section of PLAIN (its component) -> what a change of one of its fields changes
    "federation": "training",
    "model": "training",  # tiny-gpt2
    "task": "training",  # synthetic-clinical
    "method": "training",  # lora
    "defenses[0]": "training",  # dp-local
    "attacks[0]": "observation",  # mia-loss
    "attacks[1]": "attack-training",  # poison-labelflip: changes training, but is not in the clean twin
}
COUPLED = {("defenses[0]", "target_epsilon"): {"noise_multiplier": None}}
"""Fields that take another value only together with another field (dp: exactly one of the two)."""


def _candidates(value: Any, hint: Any) -> list[Any]:
    """Other values a field of type ``hint`` could take, most likely valid first."""
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return [a for a in typing.get_args(hint) if a != value]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None:
            return [c for option in options for c in _candidates(1 if option is int else 0.5, option) + [1 if option is int else 0.5]]
        return [None] + [c for option in options for c in _candidates(value, option)]
    if hint is bool:
        return [not value]
    if hint is int:
        return [value + 1, value - 1, value + 2, 1] if isinstance(value, int) else [1, 2]
    if hint is float:
        return [value * 2 if value else 0.5, value / 2, value + 0.01, 0.25]
    if typing.get_origin(hint) is tuple:  # e.g. LoRA's target_modules: a layer name the zoo models have
        return [v for v in (("c_attn",), ("q_proj",), ("x",)) if v != tuple(value)]
    if hint is str:  # free strings some Configs check against a documented set
        return [v for v in (value + "x", "all", "language", "instruction", "fedsgd") if v != value]
    return []


def _changed(document: dict[str, Any], section: str, field: str, value: Any) -> dict[str, Any]:
    for other, other_value in COUPLED.get((section, field), {}).items():
        document = _changed(document, section, other, other_value)
    document = yaml.safe_load(yaml.safe_dump(document))
    key, _, index = section.partition("[")
    if index:
        entries = document[key]
        i = int(index.rstrip("]"))
        entry = entries[i] if isinstance(entries[i], dict) else {"name": entries[i]}
        entries[i] = entry
    elif key == "federation":
        document["federation"][field] = value
        return document
    else:
        entry = document[key] if isinstance(document[key], dict) else {"name": document[key]}
        document[key] = entry
    entry.setdefault("params", {})[field] = value
    return document


def _fields(scenario, section: str) -> list[tuple[str, Any, Any]]:
    """(field, type, value in ``scenario``) for every field of the section's Config."""
    key, _, index = section.partition("[")
    config = getattr(scenario, key)
    config = config[int(index.rstrip("]"))].config if index else getattr(config, "config", config)
    hints = typing.get_type_hints(type(config))
    return [(f.name, hints[f.name], getattr(config, f.name)) for f in dataclasses.fields(config)]


@pytest.mark.parametrize("section", SECTIONS)
def test_a_change_of_any_field_changes_the_identity(tmp_path, section):
    """Each field of each Config takes another valid value: the hash changes; the training key changes
    unless the field belongs to an attack that only observes; the clean training key changes unless it
    belongs to an attack at all."""
    base = _one(tmp_path, PLAIN, "plain.yaml")
    document = yaml.safe_load(PLAIN)
    what = SECTIONS[section]
    unchangeable = []
    for field, hint, value in _fields(base, section):
        if section == "federation" and field in EXECUTION_ONLY:
            continue  # how the run is executed, not what it measures: tested below to leave the identity alone
        for candidate in (c for c in _candidates(value, hint) if c != value):
            try:
                changed = _one(tmp_path, yaml.safe_dump(_changed(document, section, field, candidate)), "changed.yaml")
            except UserError:
                continue  # not a valid value of this field: try the next
            where = f"{section}.{field}: {value!r} -> {candidate!r}"
            assert changed.hash != base.hash, where
            assert (changed.training_key != base.training_key) == (what != "observation"), where
            assert (changed.clean_training_key != base.clean_training_key) == (what == "training"), where
            break
        else:
            unchangeable.append(field)
    assert not unchangeable, f"no other valid value found for {section} fields {unchangeable}"


def test_the_device_and_the_component_names_are_in_the_identity(tmp_path):
    base = _one(tmp_path, PLAIN, "plain.yaml")
    for text in (PLAIN + "device: cpu\n", PLAIN.replace("method: lora", "method: fft"),
                 PLAIN.replace("tier: open-weight", "tier: gray-box"),
                 PLAIN.replace("defenses: [{", "defenses: [robust-median, {")):
        other = _one(tmp_path, text, "other.yaml")
        assert other.hash != base.hash and other.training_key != base.training_key, text


def test_an_observing_attack_changes_the_hash_only(tmp_path):
    base = _one(tmp_path, PLAIN, "plain.yaml")
    other = _one(tmp_path, PLAIN.replace("[mia-loss, poison-labelflip]", "[mia-zlib, poison-labelflip]"), "other.yaml")
    assert other.hash != base.hash
    assert (other.training_key, other.clean_training_key) == (base.training_key, base.clean_training_key)
    clean = base.without_attacks()
    assert clean.training_key == base.clean_training_key != base.training_key


def test_hash_and_training_key_differ_even_when_nothing_only_observes(tmp_path):
    """A row's scenario_hash never looks like some run's training_key."""
    scenario = _one(tmp_path, PLAIN.replace("attacks: [mia-loss, poison-labelflip]\n", ""), "plain.yaml")
    assert scenario.training_key == scenario.clean_training_key != scenario.hash


def test_every_registered_component_has_an_identity_by_its_bound_config():
    """Identity reads the Config dataclass: a component whose Config were not a dataclass would be
    hashed by name alone, and a change of its settings would resume the wrong runs."""
    for registry in (TIERS, MODELS, TASKS, METHODS, ATTACKS, DEFENSES):
        for name in registry.names():
            assert dataclasses.is_dataclass(registry.get(name).Config), f"{registry.kind} {name}"


# --- data paths --------------------------------------------------------------------------------------
LOCAL = PLAIN.replace("task: {name: synthetic-clinical, params: {num_classes: 3, max_length: 40}}",
                      "task: {name: local-file, params: {path: PATH}}")


def test_spellings_of_one_data_path_agree_and_another_file_differs(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    base = _one(tmp_path, LOCAL.replace("PATH", "data.csv"), "a.yaml")
    same = [LOCAL.replace("PATH", spelled) for spelled in ("./data.csv", "sub/../data.csv", str(tmp_path / "data.csv"))]
    for text in same:
        assert _keys(_one(tmp_path, text, "b.yaml")) == _keys(base), text
    assert _one(tmp_path / "sub", LOCAL.replace("PATH", "../data.csv")).hash == base.hash  # another folder
    (tmp_path / "data.csv").write_text("text,label\na,0\n")
    monkeypatch.chdir(tmp_path)  # the compatibility case: found from the working directory only
    assert _one(tmp_path / "sub", LOCAL.replace("PATH", "data.csv")).hash == base.hash
    assert _one(tmp_path, LOCAL.replace("PATH", "other.csv"), "c.yaml").hash != base.hash


def test_a_moved_checkout_keeps_its_hashes(tmp_path, monkeypatch):
    """The same repository (with the data beside it, as shared/ is) in two places: one identity."""
    hashes = []
    for place in ("here", "there"):
        root = tmp_path / place / "repo"
        (root / "scenarios").mkdir(parents=True)
        monkeypatch.setattr(bench.spec.scenario, "REPO_ROOT", root)
        inside = _one(root / "scenarios", LOCAL.replace("PATH", "../data/d.csv"), "inside.yaml")
        outside = _one(root / "scenarios", LOCAL.replace("PATH", "../../shared/d.csv"), "outside.yaml")
        assert inside.hash != outside.hash
        hashes.append((inside.hash, outside.hash))
    assert hashes[0] == hashes[1]


def test_identity_paths():
    root = bench.spec.scenario.REPO_ROOT
    assert identity_path(str(root / "scenarios" / "x" / ".." / "d.csv")) == "scenarios/d.csv"
    assert identity_path(str(root.parent / "shared" / "d.csv")) == "../shared/d.csv"
    assert identity_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # a hub name


def test_execution_settings_leave_the_identity_alone(tmp_path):
    """``federation.client_batch`` changes how clients are trained (batched or one after another), which
    agrees within float tolerance: resume and pairing must not treat the runs as different scenarios."""
    base = _one(tmp_path, PLAIN, "plain.yaml")
    document = yaml.safe_load(PLAIN)
    for field in EXECUTION_ONLY:
        value = {"engine": "flower"}.get(field, 1)  # a valid non-default value of each field
        changed = _one(tmp_path, yaml.safe_dump(_changed(document, "federation", field, value)), "changed.yaml")
        assert (changed.hash, changed.training_key) == (base.hash, base.training_key), field


def test_a_regime_is_the_scenario_without_its_defenses(tmp_path):
    """``Scenario.regime`` pairs a defended run with its undefended twin in Table 4: the same for the two,
    and for spellings of one configuration; unchanged by the fields that change nothing an attack
    measures (the learning curve, client execution); changed by anything else the run reads."""
    plain = _one(tmp_path, PLAIN, "plain.yaml")
    undefended = _one(tmp_path, PLAIN.replace("defenses: [{name: dp-local, params: {noise_multiplier: 1.0}}]",
                                              "defenses: []"), "none.yaml")
    assert undefended.hash != plain.hash and undefended.regime == plain.regime
    for label, text in SPELLINGS.items():
        assert _one(tmp_path, text, "spelled.yaml").regime == plain.regime, label
    neutral = PLAIN.replace("examples_per_client: 12}", "examples_per_client: 12, utility_curve: true, client_batch: 1}")
    assert _one(tmp_path, neutral, "neutral.yaml").regime == plain.regime
    for label, text in {"federation": PLAIN.replace("lr: 0.005", "lr: 0.01"),
                        "attacks": PLAIN.replace("attacks: [mia-loss, poison-labelflip]", "attacks: [mia-loss]"),
                        "task": PLAIN.replace("max_length: 40", "max_length: 32"),
                        "method": PLAIN.replace("method: lora", "method: fft")}.items():
        assert _one(tmp_path, text, "other.yaml").regime != plain.regime, label
