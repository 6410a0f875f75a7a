"""Scenario files: YAML -> validated, frozen ``Scenario`` objects.

A file holds one scenario, or a grid: ``matrix:`` maps dotted keys to lists (cartesian product),
``exclude:`` drops combinations, ``include:`` merges a base file underneath. Every error names the
file and the key (``UserError``); nothing runs before the whole file is valid.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from bench.config import bind, doc
from bench.errors import UserError
from bench.registry import ATTACKS, DEFENSES, METHODS, MODELS, TASKS, TIERS, Registry
from defenses.base import composition_problem

TOP_KEYS = {"name", "description", "tier", "model", "task", "method", "federation", "attacks", "defenses", "seeds",
            "device", "include", "matrix", "exclude", "tags"}


@dataclass(frozen=True, kw_only=True)
class Federation:
    clients: int = doc("Number of clients in the federation.", 4)
    clients_per_round: int = doc("Clients sampled (without replacement) each round.", 4)
    rounds: int = doc("Federated rounds.", 2)
    local_steps: int = doc("Optimizer steps per client per round (FedAvg); FedSGD takes one.", 5)
    batch_size: int = doc("Examples per local step.", 8)
    lr: float = doc("Client learning rate.", 1e-3)
    optimizer: Literal["sgd", "adam", "adamw"] = doc("Client optimizer.", "adam")
    protocol: Literal["fedavg", "fedsgd"] = doc("fedavg: local steps, clients send their new weights (as a "
                                                "difference); fedsgd: one SGD step, clients send the step itself "
                                                "(-lr x gradient).", "fedavg")
    server_lr: float = doc("Server step size on the aggregate update.", 1.0)
    partition: Literal["iid", "dirichlet"] = doc("How the pool is dealt to clients.", "iid")
    alpha: float = doc("Dirichlet concentration over labels (partition: dirichlet).", 0.5)
    examples_per_client: int = doc("Records dealt to each client (members + non-members).", 32)
    member_fraction: float = doc("Share of a client's records it trains on; the rest are non-members.", 0.5)
    eval_examples: int = doc("Test records for utility (0 = all).", 128)
    mia_candidates: int = doc("Members + non-members scored by membership attacks, half each (0 = every record the "
                              "smaller side has). TPR at 1% FPR needs about 2000 to mean >= 10 false positives.", 256)

    def __post_init__(self) -> None:
        positive = ["clients", "clients_per_round", "rounds", "local_steps", "batch_size", "examples_per_client"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.clients_per_round > self.clients:
            raise ValueError(f"clients_per_round ({self.clients_per_round}) exceeds clients ({self.clients})")
        if not 0 < self.member_fraction < 1:
            raise ValueError("member_fraction must be strictly between 0 and 1")
        if self.mia_candidates == 1 or self.mia_candidates < 0:
            raise ValueError("mia_candidates must be 0 (every record) or at least 2")
        if self.lr <= 0 or self.alpha <= 0:
            raise ValueError("lr and alpha must be positive")


@dataclass(frozen=True)
class Component:
    name: str
    params: dict[str, Any]
    config: Any


@dataclass(frozen=True)
class Scenario:
    name: str
    file: str
    tier: Component
    model: Component
    task: Component
    method: Component
    federation: Federation
    attacks: tuple[Component, ...]
    defenses: tuple[Component, ...]
    seeds: tuple[int, ...]
    device: str
    description: str = ""
    raw: dict[str, Any] | None = None

    @property
    def hash(self) -> str:
        return _digest({k: v for k, v in (self.raw or {}).items() if k not in ("seeds", "description", "name")})

    @property
    def training_attacks(self) -> tuple[Component, ...]:
        """The attacks that change what clients train on or send (poisoning, Byzantine); the others only observe."""
        return tuple(a for a in self.attacks if ATTACKS.get(a.name).changes_training)

    @property
    def training_key(self) -> str:
        """Runs with the same key and seed train the same model, whatever they observe afterwards."""
        return self._training_digest(self.training_attacks)

    @property
    def clean_training_key(self) -> str:
        """The training key of this scenario without its attackers (its clean twin's)."""
        return self._training_digest(())

    def without_attacks(self) -> Scenario:
        """The same federation with no attack at all: the reference for ``poison.utility_drop``."""
        raw = {k: v for k, v in (self.raw or {}).items() if k != "attacks"}
        return build(raw, f"{self.name}~no-attackers", self.file)

    def _training_digest(self, attacks: tuple[Component, ...]) -> str:
        body = {k: v for k, v in (self.raw or {}).items() if k not in ("seeds", "description", "name", "tags", "attacks")}
        body["training_attacks"] = [{"name": a.name, "params": a.params} for a in attacks]
        return _digest(body)

    @property
    def defense_label(self) -> str:
        return "+".join(d.name for d in self.defenses) or "none"

    @property
    def attack_label(self) -> str:
        return "+".join(a.name for a in self.attacks) or "none"


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load(path: str | Path) -> list[Scenario]:
    """Every scenario a file describes (a grid expands)."""
    path = Path(path)
    document = _read(path, chain=())
    return [build(entry, name, str(path)) for name, entry in _expand(document, str(path))]


def load_many(paths: list[str | Path]) -> list[Scenario]:
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.rglob("*.yaml")) if p.is_dir() else [p]
    return [s for f in files for s in load(f)]


def _read(path: Path, chain: tuple[str, ...]) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"file not found{' (included from ' + chain[-1] + ')' if chain else ''}", file=str(path))
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UserError(f"invalid YAML: {error}".replace("\n", " "), file=str(path)) from None
    if not isinstance(document, dict):
        raise UserError("a scenario file must be a mapping at the top level", file=str(path))
    unknown = sorted(set(document) - TOP_KEYS)
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(TOP_KEYS))}", file=str(path), key=unknown[0])
    include = document.pop("include", None)
    if include is None:
        return document
    if not isinstance(include, str):
        raise UserError("include must be a file path", file=str(path), key="include")
    base_path = (path.parent / include).resolve()
    if str(base_path) in chain:
        raise UserError("include cycle", file=str(path), key="include")
    base = _read(base_path, chain + (str(path),))
    return merge(base, document)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _expand(document: dict[str, Any], file: str) -> list[tuple[str, dict[str, Any]]]:
    matrix = document.pop("matrix", None)
    exclude = document.pop("exclude", None) or []
    name = document.get("name") or Path(file).stem
    if matrix is None:
        return [(name, document)]
    if not isinstance(matrix, dict) or not matrix:
        raise UserError("matrix must be a non-empty mapping of keys to lists", file=file, key="matrix")
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            raise UserError("each matrix entry must be a non-empty list", file=file, key=f"matrix.{key}")
    if not isinstance(exclude, list):
        raise UserError("exclude must be a list of mappings", file=file, key="exclude")
    keys = list(matrix)
    entries = []
    for combo in itertools.product(*(matrix[k] for k in keys)):
        chosen = dict(zip(keys, combo))
        if any(_matches(chosen, rule) for rule in exclude):
            continue
        entry = copy.deepcopy(document)
        for key, value in chosen.items():
            _set_dotted(entry, key, value, file)
        label = ",".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in chosen.items())
        entries.append((f"{name}[{label}]", entry))
    if not entries:
        raise UserError("the grid is empty after exclude", file=file, key="matrix")
    return entries


def _short(value: Any) -> str:
    if isinstance(value, dict):
        if "name" not in value:
            return json.dumps(value, sort_keys=True)
        params = value.get("params") or {}
        inner = ",".join(f"{k}={_short(v)}" for k, v in sorted(params.items()))
        return f"{value['name']}({inner})" if inner else str(value["name"])
    if isinstance(value, list):
        return "+".join(_short(v) for v in value) or "none"
    return str(value)


def _matches(chosen: dict[str, Any], rule: Any) -> bool:
    """An exclude rule matches when every key agrees; a bare name matches a component of that name
    whatever its params."""
    return isinstance(rule, dict) and all(_same(chosen.get(k), v) for k, v in rule.items())


def _same(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, str) and isinstance(value, dict):
        return value.get("name") == wanted
    if isinstance(wanted, list) and isinstance(value, list):
        return len(wanted) == len(value) and all(_same(v, w) for v, w in zip(value, wanted))
    return _short(value) == _short(wanted)


def _set_dotted(entry: dict[str, Any], dotted: str, value: Any, file: str) -> None:
    node = entry
    parts = dotted.split(".")
    for part in parts[:-1]:
        if isinstance(node.get(part), str):  # "method: lora" promoted to {"name": "lora"}
            node[part] = {"name": node[part]}
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError("cannot set a sub-key of a non-mapping", file=file, key=f"matrix.{dotted}")
    node[parts[-1]] = value


def _component(value: Any, registry: Registry, file: str, key: str) -> Component:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise UserError(f"expected a {registry.kind} name or a mapping with 'name'", file=file, key=key)
    extra = sorted(set(value) - {"name", "params"})
    if extra:
        raise UserError(f"unknown key {extra[0]!r}; allowed: name, params", file=file, key=f"{key}.{extra[0]}")
    if not isinstance(value["name"], str):
        raise UserError(f"{registry.kind} name must be a string", file=file, key=f"{key}.name")
    cls = registry.get(value["name"], file=file, key=f"{key}.name")
    params = value.get("params") or {}
    if not isinstance(params, dict):
        raise UserError("params must be a mapping", file=file, key=f"{key}.params")
    return Component(value["name"], dict(params), bind(cls.Config, params, file=file, key=f"{key}.params"))


def _components(values: Any, registry: Registry, file: str, key: str) -> tuple[Component, ...]:
    if values is None:
        return ()
    if not isinstance(values, list):
        raise UserError(f"expected a list of {registry.kind}s", file=file, key=key)
    components = tuple(_component(v, registry, file, f"{key}[{i}]") for i, v in enumerate(values))
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise UserError(f"a {registry.kind} is listed twice", file=file, key=key)
    return components


def _seeds(value: Any, file: str) -> tuple[int, ...]:
    if value is None:
        return (0,)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise UserError("seeds must be a positive count or a non-empty list of integers", file=file, key="seeds")


def build(entry: dict[str, Any], name: str, file: str) -> Scenario:
    for required in ("tier", "model", "task", "method"):
        if required not in entry:
            raise UserError(f"missing required key {required!r}", file=file, key=required)
    device = entry.get("device", "auto")
    if not isinstance(device, str):
        raise UserError("device must be 'auto', 'cpu' or 'cuda'", file=file, key="device")
    defenses = _components(entry.get("defenses"), DEFENSES, file, "defenses")
    _check_composition(defenses, file)
    return Scenario(
        name=name,
        file=file,
        tier=_component(entry["tier"], TIERS, file, "tier"),
        model=_component(entry["model"], MODELS, file, "model"),
        task=_component(entry["task"], TASKS, file, "task"),
        method=_component(entry["method"], METHODS, file, "method"),
        federation=bind(Federation, entry.get("federation"), file=file, key="federation"),
        attacks=_components(entry.get("attacks"), ATTACKS, file, "attacks"),
        defenses=defenses,
        seeds=_seeds(entry.get("seeds"), file),
        device=device,
        description=str(entry.get("description", "")),
        raw=entry,
    )


def _check_composition(defenses: tuple[Component, ...], file: str) -> None:
    """Two aggregation rules or two transports are a mistake in the file: refuse it before anything runs."""
    problem = composition_problem([DEFENSES.get(d.name) for d in defenses])
    if problem:
        raise UserError(problem, file=file, key="defenses")
