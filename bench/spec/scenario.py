"""Scenario files: YAML -> validated, frozen ``Scenario`` objects.

A file holds one scenario, or a grid: ``matrix:`` maps dotted keys to lists (cartesian product),
``exclude:`` drops combinations, ``include:`` merges a base file underneath. Every error names the
file and the key (``UserError``); nothing runs before the whole file is valid.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import yaml

from bench.api.config import FieldError, bind, doc
from bench.api.defense import composition_problem
from bench.api.errors import UserError
from bench.api.handles import TaskSpec
from bench.api.registry import ATTACKS, DEFENSES, METHODS, MODELS, PROTOCOLS, TASKS, TIERS, Registry
from bench.api.vocabulary import JsonObject, JsonValue

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import PretrainedConfig

T = TypeVar("T")
"""A bound config (``_resolve_paths`` returns one of the class it is given)."""


class ModelCheck(Protocol):
    """What ``check`` asks a model source before any weights load (``bench.world.models.ModelSource``)."""

    def check(self) -> None: ...
    def context_length(self) -> int | None: ...
    def on_hub(self) -> bool: ...
    def check_task(self, task_kind: str) -> str | None: ...
    def architecture(self) -> PretrainedConfig | None: ...

MAX_FILE_BYTES = 1 << 20
"""A scenario file over 1 MiB is refused before parsing (real ones are a few KiB)."""
MAX_EXPANDED_SIZE = 4 << 20
"""Characters + nodes of the document with every YAML alias expanded: an alias bomb ("billion
laughs") is refused while it is still a small graph, before anything walks it."""
MAX_SEEDS = 1000
MAX_SEED = 2**32 - 1
MAX_CELLS = 10_000
"""Grid cells one file may expand into (after exclude)."""
MAX_CLIENTS = 10_000
MAX_ROUNDS = 100_000
MAX_LOCAL_STEPS = 100_000
MAX_BATCH_SIZE = 65_536
MAX_EXAMPLES = 1_000_000
"""Records a federation may deal in all (clients x examples_per_client), and the cap on eval_examples
and mia_candidates: beyond it, generating or scoring the records alone takes hours."""
MAX_NESTING = 64
"""Flow nesting (``[[[...``) and indentation columns past this are refused before parsing: PyYAML's
scanner is quadratic in the nesting depth (1,500 levels take seconds), and no scenario nests past 6."""
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True, kw_only=True)
class Federation:
    clients: int = doc(f"Number of clients in the federation (1..{MAX_CLIENTS}).", 4)
    clients_per_round: int = doc("Clients sampled (without replacement) each round (1..clients).", 4)
    rounds: int = doc(f"Federated rounds (1..{MAX_ROUNDS}).", 2)
    local_steps: int = doc(f"Optimizer steps per client per round (FedAvg); FedSGD takes one (1..{MAX_LOCAL_STEPS}).", 5)
    batch_size: int = doc(f"Examples per local step (1..{MAX_BATCH_SIZE}).", 8)
    lr: float = doc("Client learning rate (finite, > 0).", 1e-3)
    optimizer: Literal["sgd", "adam", "adamw"] = doc("Client optimizer.", "adam")
    protocol: str = doc("A registered round protocol (bench.engine.protocols): fedavg: local steps, clients send "
                        "their new weights (as a difference); fedsgd: one SGD step, clients send the step itself "
                        "(-lr x gradient); kd: clients send logits on a public proxy set, the server distils; "
                        "split: clients run the bottom cut_layer blocks and send activations.", "fedavg")
    server_lr: float = doc("Server step size on the aggregate update (finite, > 0).", 1.0)
    partition: Literal["iid", "dirichlet"] = doc("How the pool is dealt to clients.", "iid")
    alpha: float = doc("Dirichlet concentration over labels (partition: dirichlet; finite, > 0).", 0.5)
    examples_per_client: int = doc(f"Records dealt to each client (members + non-members); clients x "
                                   f"examples_per_client is at most {MAX_EXAMPLES}.", 32)
    member_fraction: float = doc("Share of a client's records it trains on; the rest are non-members.", 0.5)
    eval_examples: int = doc(f"Test records for utility (0 = all; at most {MAX_EXAMPLES}).", 128)
    utility_curve: bool = doc("Also evaluate utility after every round (a learning curve: utility.curve.* rows, the "
                              "curve in their extra); costs one utility evaluation per round.", False)
    mia_candidates: int = doc("Members + non-members scored by membership attacks, half each (0 = every record the "
                              "smaller side has). TPR at 1% FPR needs about 2000 to mean >= 10 false positives.", 256)
    client_batch: int | Literal["auto"] = doc(
        "Clients trained together as one batched computation (bench.client.batched): an int >= 1 (1 = one after another, "
        "as before batching existed), or 'auto': as many as measured free memory allows (CUDA), at most 16 on CPU. "
        "An execution setting, outside the scenario hash: batched and sequential training agree within float "
        "tolerance (rtol 1e-4 on updates), not bit for bit.", "auto")
    cut_layer: int = doc("split: transformer blocks on the client side, below the cut (0 = the embedding only).", 1)
    proxy_examples: int = doc("kd: public records in the proxy set the clients' logits are shared on (>= 1).", 32)
    kd_temperature: float = doc("kd: softmax temperature of the shared logits and of distillation (> 0).", 2.0)
    kd_top_k: int = doc("kd: share only each row's k largest logits (0 = all of them).", 0)
    distill_steps: int = doc("kd: optimizer steps of each distillation (server into the global model, clients back).", 5)
    engine: Literal["inprocess", "flower", "flower-deployment"] = doc(
        "Who runs the rounds: inprocess (TierBench's own loop, this process), flower (Flower 1.41's simulation "
        "engine: a ServerApp whose strategy is TierBench's server side, ClientApps running TierBench's local training; "
        "needs the `fl` extra), or flower-deployment (the same apps on Flower's deployment engine: a local SuperLink "
        "and SuperNodes started as processes for the run and stopped after it). An execution setting, outside the "
        "scenario hash: the same metrics as inprocess with client_batch 1 (clients train one after another in all).",
        "inprocess")
    mia_nonmembers: int = doc("Non-members scored by membership attacks when more than the members (0 = as many as "
                              "the members drawn, from mia_candidates): a low false-positive rate is only resolved "
                              "with many non-members (FPR 1% needs 1000 for 10 false positives); lower "
                              "member_fraction to hold them.", 0)

    def __post_init__(self) -> None:
        maxima = {"clients": MAX_CLIENTS, "clients_per_round": MAX_CLIENTS, "rounds": MAX_ROUNDS,
                  "local_steps": MAX_LOCAL_STEPS, "batch_size": MAX_BATCH_SIZE, "examples_per_client": MAX_EXAMPLES}
        for name, most in maxima.items():
            value = getattr(self, name)
            if value < 1:
                raise FieldError(name, f"{name} must be at least 1, got {value}")
            if value > most:
                raise FieldError(name, f"{name} must be at most {most}, got {value}")
        if self.clients_per_round > self.clients:
            raise FieldError("clients_per_round", f"clients_per_round ({self.clients_per_round}) exceeds clients ({self.clients})")
        if self.clients * self.examples_per_client > MAX_EXAMPLES:
            raise FieldError("examples_per_client", f"clients x examples_per_client = {self.clients * self.examples_per_client} "
                             f"records; at most {MAX_EXAMPLES}")
        if not 0 < self.member_fraction < 1:
            raise FieldError("member_fraction", "member_fraction must be strictly between 0 and 1")
        if self.mia_candidates == 1 or not 0 <= self.mia_candidates <= MAX_EXAMPLES:
            raise FieldError("mia_candidates", f"mia_candidates must be 0 (every record) or 2..{MAX_EXAMPLES}")
        if self.client_batch != "auto" and not 1 <= self.client_batch <= MAX_CLIENTS:
            raise FieldError("client_batch", f"client_batch must be 'auto' or 1..{MAX_CLIENTS}, got {self.client_batch}")
        if self.protocol not in PROTOCOLS:
            raise FieldError("protocol", f"unknown protocol {self.protocol!r}; allowed: {', '.join(PROTOCOLS.names())}")
        for name in ("cut_layer", "kd_top_k"):
            if getattr(self, name) < 0:
                raise FieldError(name, f"{name} must be at least 0, got {getattr(self, name)}")
        for name in ("proxy_examples", "distill_steps"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.kd_temperature < math.inf:
            raise FieldError("kd_temperature", f"kd_temperature must be a positive finite number, got {self.kd_temperature}")
        if not 0 <= self.mia_nonmembers <= MAX_EXAMPLES:
            raise FieldError("mia_nonmembers", f"mia_nonmembers must be in 0..{MAX_EXAMPLES}")
        if not 0 <= self.eval_examples <= MAX_EXAMPLES:
            raise FieldError("eval_examples", f"eval_examples must be in 0..{MAX_EXAMPLES}")
        for name in ("lr", "server_lr", "alpha"):
            if not 0 < getattr(self, name) < math.inf:
                raise FieldError(name, f"{name} must be a positive finite number, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class Resists:
    """A published curve behind Table 4's "not applicable" cells of one (method, attack): the attack succeeds
    somewhere on the curve (a larger rank, a smaller batch) and fails at the grid's setting, so the cells read
    *resists* rather than an unexplained zero (issue 15). The report reads the curve; nothing here trains."""

    method: str = doc("The method (a Table 4 row) the curve backs, a registered method name.")
    attack: str = doc("The attack the curve measures (the cell's attack), a registered attack name.")
    curve: str = doc("The curve: a CSV file, relative to the scenario file's folder, with a `method` column, the "
                     "metric's column and its `<metric>.floor` column (one row per run).", path="file")
    metric: str = doc("The curve's headline column (e.g. inversion.rouge1); `<metric>.floor` is each row's failure "
                      "level, and a row where the metric beats it by at least 0.05 shows the attack working.")
    why: str = doc("One line: why the grid's setting lies on the curve's failing side.")
    protocol: str = doc("The round protocol of the cells it backs, as Table 4 labels rows: `fedavg` (parameter "
                        "sharing: FedAvg and FedSGD), `kd`, `split (cut N)`.", "fedavg")

    def __post_init__(self) -> None:
        for name in ("method", "attack", "curve", "metric", "why", "protocol"):
            if not getattr(self, name).strip():
                raise FieldError(name, f"{name} must be a non-empty string")


@dataclass(frozen=True, kw_only=True)
class ScenarioSpec:
    """The top level of a scenario file: every key, its type and what it means."""

    name: str = doc("Scenario name (default: the file name); a grid cell appends its matrix values.", "")
    description: str = doc("One line describing the scenario, for reports.", "")
    tags: tuple[str, ...] = doc("Free labels (strings) for filtering results.", ())
    include: str = doc("A base scenario file merged underneath this one (relative to this file's folder).", "")
    matrix: dict[str, Any] = doc(f"Grid: dotted key (e.g. federation.rounds, method, task.params.max_length) -> "
                                 f"non-empty list of values; the product expands into at most {MAX_CELLS} scenarios.",
                                 default_factory=dict)
    exclude: tuple[dict[str, Any], ...] = doc("Grid cells to drop: each a mapping of matrix keys to values (a bare "
                                              "name matches a component whatever its params); each must match a cell.", ())
    tier: Any = doc("Access tier: a name or {name, params} (see `ls`).")
    model: Any = doc("Base model source: a name or {name, params} (zoo models, hf).")
    task: Any = doc("Task (data): a name or {name, params} (synthetic-*, local-file, hf-dataset).")
    method: Any = doc("Post-training method: a name or {name, params}.")
    attacks: tuple[Any, ...] = doc("Attacks: a list of names or {name, params}.", ())
    defenses: tuple[Any, ...] = doc("Defenses: a list of names or {name, params}.", ())
    federation: Federation = doc("Federation settings (clients, rounds, data per client, ...).", default_factory=Federation)
    seeds: int | tuple[int, ...] = doc(f"A count N (seeds 0..N-1, 1..{MAX_SEEDS}) or a list of distinct seeds in "
                                       f"0..{MAX_SEED} (at most {MAX_SEEDS}).", 1)
    device: str = doc("'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'.", "auto")
    resists: tuple[Resists, ...] = doc("Published curves that back Table 4's \"not applicable\" cells of a (method, "
                                       "attack) as *resists* (each {method, attack, curve, metric, why}); read by the "
                                       "report only, not part of a run's identity.", ())

    def __post_init__(self) -> None:
        if isinstance(self.seeds, int):
            if not 1 <= self.seeds <= MAX_SEEDS:
                raise FieldError("seeds", f"a seed count must be in 1..{MAX_SEEDS}, got {self.seeds}")
        else:
            if not 1 <= len(self.seeds) <= MAX_SEEDS:
                raise FieldError("seeds", f"a seed list must hold 1..{MAX_SEEDS} seeds, got {len(self.seeds)}")
            bad = [s for s in self.seeds if not 0 <= s <= MAX_SEED]
            if bad:
                raise FieldError("seeds", f"seeds must be in 0..{MAX_SEED}, got {bad[0]}")
            if len(set(self.seeds)) != len(self.seeds):
                twice = next(s for s in self.seeds if self.seeds.count(s) > 1)
                raise FieldError("seeds", f"seed {twice} is listed twice (it would run the same training twice)")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise FieldError("device", f"unknown device {self.device!r}; allowed: auto, cpu, cuda, cuda:N "
                                       f"(a GPU is 'cuda')")

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seeds)) if isinstance(self.seeds, int) else self.seeds


TOP_KEYS = {f.name for f in dataclasses.fields(ScenarioSpec)}
COMPONENT_KEYS = ("tier", "model", "task", "method")
GRID_KEYS = ("include", "matrix", "exclude")


@dataclass(frozen=True)
class Component:
    name: str
    params: JsonObject
    config: object
    """The component's bound config (its class's ``Config``): handed to the registered class, never read here."""


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
    raw: JsonObject | None = None
    resists: tuple[Resists, ...] = ()
    """Curves backing Table 4 cells (``Resists``; curve paths resolved), read by the report only."""

    @property
    def hash(self) -> str:
        """The scenario's identity: runs are keyed by (hash, seed). A digest of the bound configuration
        (``identity``), so any spelling of the same configuration has the same hash."""
        return _digest(self.identity(self.attacks, kind="scenario"))

    @property
    def training_attacks(self) -> tuple[Component, ...]:
        """The attacks that change what clients train on or send (poisoning, Byzantine); the others only observe."""
        return tuple(a for a in self.attacks if ATTACKS.get(a.name).changes_training)

    @property
    def training_key(self) -> str:
        """Runs with the same key and seed train the same model, whatever they observe afterwards."""
        return _digest(self.identity(self.training_attacks, kind="training"))

    @property
    def clean_training_key(self) -> str:
        """The training key of this scenario without its attackers (its clean twin's)."""
        return _digest(self.identity((), kind="training"))

    @property
    def regime(self) -> str:
        """The scenario without its defenses and without the federation fields that change nothing an
        attack measures (``MEASUREMENT_NEUTRAL``): a defended run and the undefended run of the same regime
        and seed are a Table 4 pair (``bench.reporting.table4``). Pairing by seed alone would pair a defended
        run with another scenario's undefended run whenever a store holds two regimes of one method."""
        body = self.identity(self.attacks, kind="regime")
        body["defenses"] = []
        body["federation"] = {k: v for k, v in body["federation"].items() if k not in MEASUREMENT_NEUTRAL}
        return _digest(body)

    def without_attacks(self) -> Scenario:
        """The same federation with no attack at all: the reference for ``poison.utility_drop``."""
        raw = {k: v for k, v in (self.raw or {}).items() if k != "attacks"}
        return build(raw, f"{self.name}~no-attackers", self.file)

    def identity(self, attacks: tuple[Component, ...], kind: str) -> JsonObject:
        """The bound, normalised configuration with ``attacks``: every Config with its defaults filled
        (so YAML spelling, key order, ints written for floats and include-vs-inline do not matter),
        data paths as ``identity_path`` writes them. Left out: name (a grid cell's name is a label),
        description and tags (labels), seeds (runs are keyed by (hash, seed)). Kept: ``device`` as
        written (cpu and cuda differ in the last bits; ``auto`` depends on the machine) and the order
        of attacks and defenses (a miss is safe, a false hit is not). ``kind`` keeps a hash and a
        training key apart even when their bodies agree."""
        return {"identity": kind, "tier": _component_identity(self.tier), "model": _component_identity(self.model),
                "task": _component_identity(self.task), "method": _component_identity(self.method),
                "federation": _federation_identity(self.federation), "attacks": [_component_identity(a) for a in attacks],
                "defenses": [_component_identity(d) for d in self.defenses], "device": self.device}

    @property
    def defense_label(self) -> str:
        return "+".join(d.name for d in self.defenses) or "none"

    @property
    def attack_label(self) -> str:
        return "+".join(a.name for a in self.attacks) or "none"


def _digest(body: JsonObject) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


REPO_ROOT = Path(__file__).absolute().parent.parent
"""Data and model paths enter a scenario's identity relative to this folder (see ``identity_path``)."""


EXECUTION_ONLY = ("client_batch", "engine")
"""Federation fields that change how training is executed, not what it computes (within float tolerance):
left out of the identity, so published hashes and stored runs stay valid."""


MEASUREMENT_NEUTRAL = ("utility_curve", *EXECUTION_ONLY)
"""Federation fields that change neither the trained model nor what an attack on it measures: drawing the
learning curve (an evaluation per round) and how clients are executed. Runs that differ only in these (and
in their defenses) are one regime: they share shadow models (``bench.engine.views``) and Table 4 pairs a
defended run with the undefended run of its regime (``bench.reporting.leaderboard.regime_of``)."""


PROTOCOL_FIELDS = ("cut_layer", "proxy_examples", "kd_temperature", "kd_top_k", "distill_steps")
"""Federation fields added with the kd and split protocols: in the identity only where they differ from
their defaults, so every hash published before them stays valid."""


def _federation_identity(federation: Federation) -> JsonObject:
    defaults = {f.name: f.default for f in dataclasses.fields(Federation) if f.name in PROTOCOL_FIELDS}
    return {k: v for k, v in _canonical(federation).items()
            if k not in EXECUTION_ONLY and not (k in defaults and v == defaults[k])}


def _canonical(value: object) -> JsonValue:
    """A JSON-ready form in which equal configurations are equal: dataclasses become mappings of
    every field (defaults included), tuples lists, -0.0 is 0.0; mapping order is left to the digest."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value == 0:
        return 0.0
    return value


def _component_identity(component: Component) -> JsonObject:
    config = _canonical(component.config)
    if dataclasses.is_dataclass(component.config):
        for f in dataclasses.fields(component.config):
            value = getattr(component.config, f.name)
            if f.metadata.get("path") and isinstance(value, str):
                config[f.name] = identity_path(value)
    return {"name": component.name, "config": config}


def identity_path(resolved: str) -> str:
    """How a data or model path enters the identity: where the file is, not how it was spelled.

    It is written relative to the repository root (with ``..`` when outside it, as the shipped
    ``../../../shared/data/...`` is), so ``data.csv``, ``./sub/../data.csv`` and the absolute path agree,
    and the same checkout moved elsewhere keeps its hashes, with the data beside it as shared/ is. Not
    absolute: that would change every hash on a move. Not as written: that would differ per scenario
    folder and per spelling. (Data at a fixed absolute place outside a moved checkout changes its
    hashes: a miss, which reruns, never a false hit.) A hub name, which ``resolve_path`` left as
    written and no local file backs, stays as written.
    """
    if not resolved:
        return resolved
    if not os.path.isabs(resolved):
        if not os.path.exists(resolved):
            return resolved  # a hub name
        resolved = os.path.abspath(resolved)  # found from the working directory (the compatibility case)
    path = os.path.normpath(resolved)
    root = str(REPO_ROOT)
    real = os.path.realpath(path)
    if not _inside(path, root) and _inside(real, os.path.realpath(root)):
        path, root = real, os.path.realpath(root)  # reached through a link to the checkout
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return Path(path).as_posix()


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def load(path: str | Path) -> list[Scenario]:
    """Every scenario a file describes (a grid expands)."""
    path = Path(path)
    document = _read(path, chain=())
    return [build(entry, name, str(path)) for name, entry in _expand(document, str(path))]


def load_many(paths: list[str | Path]) -> list[Scenario]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*.yaml"))
            if not found:
                raise UserError(f"no scenario files (*.yaml) in {p}", file=str(p))
            files += found
        else:
            files.append(p)
    return [s for f in files for s in load(f)]


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would keep the last)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, object]:
    seen: dict[Hashable, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base" may be overridden by explicit keys
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        except TypeError:  # an unhashable key: SafeLoader reports it below
            pass
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes + scalar characters once every alias is expanded, computed on the graph (shared nodes
    once), so a "billion laughs" costs microseconds to measure; a recursive alias counts as infinite."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_EXPANDED_SIZE + 1  # seen again while being measured: a cycle
    if isinstance(node, yaml.ScalarNode):
        size = 1 + len(node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    else:
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[key] = min(size, MAX_EXPANDED_SIZE + 1)
    return memo[key]


def _biggest_key(node: yaml.Node, memo: dict[int, int]) -> str | None:
    """The first top-level key whose value alone expands past the limit (where the bomb is)."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and memo.get(id(value), 0) > MAX_EXPANDED_SIZE:
                return key.value
    return None


def parse_yaml(data: bytes, file: str) -> JsonValue:
    """The document in ``data``, refusing what no scenario needs: over 1 MiB, non-UTF-8, duplicate
    keys, aliases that expand past ``MAX_EXPANDED_SIZE``, nesting deeper than Python's stack."""
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"file is {len(data)} bytes; a scenario file may be at most {MAX_FILE_BYTES} bytes", file=file)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"not UTF-8 text: byte {data[error.start]:#04x} at offset {error.start}", file=file) from None
    _check_nesting(text, file)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        memo: dict[int, int] = {}
        if _expanded_size(node, memo) > MAX_EXPANDED_SIZE:
            raise UserError(f"YAML aliases expand past {MAX_EXPANDED_SIZE} characters (an alias bomb or a recursive "
                            f"alias); write the values out", file=file, key=_biggest_key(node, memo))
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise UserError(f"invalid YAML: {error}".replace("\n", " "), file=file) from None
    except RecursionError:
        raise UserError("invalid YAML: nested too deeply", file=file) from None
    except ValueError as error:  # e.g. a timestamp such as 2026-13-45
        raise UserError(f"invalid YAML value: {error}", file=file) from None
    finally:
        loader.dispose()


def _check_nesting(text: str, file: str) -> None:
    depth = deepest = 0
    quote = ""
    for line_number, line in enumerate(text.splitlines(), 1):
        indent = len(line) - len(line.lstrip(" "))
        if indent > 4 * MAX_NESTING:
            raise UserError(f"line {line_number} is indented {indent} columns; at most {4 * MAX_NESTING}", file=file)
        for char in line:
            if quote:
                quote = "" if char == quote else quote
            elif char in "'\"":
                quote = char
            elif char == "#":
                break
            elif char in "[{":
                depth += 1
                deepest = max(deepest, depth)
            elif char in "]}":
                depth -= 1
        if deepest > MAX_NESTING:
            raise UserError(f"brackets nest deeper than {MAX_NESTING} levels (line {line_number})", file=file)


def _read(path: Path, chain: tuple[str, ...]) -> JsonObject:
    origin = f" (included from {chain[-1]})" if chain else ""
    if not path.exists():
        raise UserError(f"file not found{origin}", file=str(path), key="include" if chain else None)
    if not path.is_file():
        raise UserError(f"not a file (a directory?){origin}; include names one .yaml file", file=str(path),
                        key="include" if chain else None)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read: {error.strerror}", file=str(path)) from None
    document = parse_yaml(data, str(path))
    if not isinstance(document, dict):
        raise UserError("a scenario file must be a mapping at the top level", file=str(path))
    unknown = sorted((k for k in document if k not in TOP_KEYS), key=str)
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(TOP_KEYS))}", file=str(path),
                        key=str(unknown[0]))
    include = document.pop("include", None)
    if include is None:
        return document
    if not isinstance(include, str) or not include.strip():
        raise UserError("include must be a file path (a string)", file=str(path), key="include")
    base_path = (path.parent / include).resolve()
    if str(base_path) in chain or base_path == path.resolve():
        raise UserError("include cycle", file=str(path), key="include")
    base = _read(base_path, chain + (str(path),))
    return merge(base, document)


def merge(base: JsonObject, over: JsonObject) -> JsonObject:
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _expand(document: JsonObject, file: str) -> list[tuple[str, JsonObject]]:
    matrix = document.pop("matrix", None)
    exclude = document.pop("exclude", None)
    name = document.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise UserError(f"name must be a non-empty string, got {_cut(name)}", file=file, key="name")
    name = name or Path(file).stem
    if matrix is None:
        if exclude is not None:
            raise UserError("exclude drops cells of a matrix, and this file has no matrix", file=file, key="exclude")
        return [(name, document)]
    if not isinstance(matrix, dict) or not matrix:
        raise UserError("matrix must be a non-empty mapping of keys to lists", file=file, key="matrix")
    cells = 1
    for key, values in matrix.items():
        if not isinstance(key, str):
            raise UserError(f"matrix keys are dotted key names, got {key!r}", file=file, key="matrix")
        _check_matrix_key(key, file)
        if not isinstance(values, list) or not values:
            raise UserError("each matrix entry must be a non-empty list", file=file, key=f"matrix.{key}")
        seen: set[str] = set()
        for value in values:
            short = _short(value)
            if short in seen:
                raise UserError(f"{_cut(short)} is listed twice (it would run the same cell twice)", file=file,
                                key=f"matrix.{key}")
            seen.add(short)
        cells *= len(values)
    if cells > MAX_CELLS:
        raise UserError(f"the grid has {cells} cells; at most {MAX_CELLS} per file", file=file, key="matrix")
    rules = _exclude_rules(exclude, matrix, file)
    keys = list(matrix)
    entries = []
    used = [False] * len(rules)
    for combo in itertools.product(*(matrix[k] for k in keys)):
        chosen = dict(zip(keys, combo))
        hits = [i for i, rule in enumerate(rules) if _matches(chosen, rule)]
        for i in hits:
            used[i] = True
        if hits:
            continue
        entry = copy.deepcopy(document)
        for key, value in chosen.items():
            _set_dotted(entry, key, value, file)
        label = ",".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in chosen.items())
        entries.append((f"{name}[{label}]", entry))
    unused = [i for i, hit in enumerate(used) if not hit]
    if unused:
        raise UserError(f"matches no cell of the matrix: {json.dumps(rules[unused[0]], default=str)}", file=file,
                        key=f"exclude[{unused[0]}]")
    if not entries:
        raise UserError("the grid is empty after exclude", file=file, key="matrix")
    return entries


def _cut(value: JsonValue, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_matrix_key(dotted: str, file: str) -> None:
    """A matrix key names a scenario key that exists: ``federaton.rounds`` would otherwise add a key
    nothing reads, and run the same training once per value."""
    parts = dotted.split(".")
    settable = sorted(TOP_KEYS - set(GRID_KEYS))
    where = f"matrix.{dotted}"
    if parts[0] not in settable:
        raise UserError(f"unknown key {parts[0]!r}; allowed: {', '.join(settable)}", file=file, key=where)
    if len(parts) == 1:
        return
    if parts[0] == "federation":
        fields = sorted(f.name for f in dataclasses.fields(Federation))
        if len(parts) != 2 or parts[1] not in fields:
            raise UserError(f"unknown federation key {'.'.join(parts[1:])!r}; allowed: {', '.join(fields)}",
                            file=file, key=where)
        return
    if parts[0] in COMPONENT_KEYS:
        if (parts[1] == "name" and len(parts) == 2) or (parts[1] == "params" and len(parts) <= 3):
            return  # a parameter's own name is checked when the cell binds its component's config
        raise UserError(f"a component key takes {parts[0]}, {parts[0]}.name or {parts[0]}.params.KEY", file=file,
                        key=where)
    raise UserError(f"{parts[0]} has no sub-keys; vary the whole value ({parts[0]})", file=file, key=where)


def _exclude_rules(exclude: JsonValue, matrix: JsonObject, file: str) -> list[JsonObject]:
    if exclude is None:
        return []
    if not isinstance(exclude, list):
        raise UserError("exclude must be a list of mappings", file=file, key="exclude")
    for i, rule in enumerate(exclude):
        if not isinstance(rule, dict) or not rule:
            raise UserError("each exclude rule must be a non-empty mapping of matrix keys to values", file=file,
                            key=f"exclude[{i}]")
        for key in rule:
            if key not in matrix:
                raise UserError(f"{key!r} is not a matrix key; allowed: {', '.join(map(str, matrix))}", file=file,
                                key=f"exclude[{i}].{key}")
    return exclude


def _short(value: JsonValue) -> str:
    if isinstance(value, dict):
        if "name" not in value:
            return json.dumps(value, sort_keys=True, default=str)
        params = value.get("params") or {}
        if not isinstance(params, dict):
            return json.dumps(value, sort_keys=True, default=str)
        inner = ",".join(f"{k}={_short(v)}" for k, v in sorted(params.items(), key=lambda kv: str(kv[0])))
        return f"{value['name']}({inner})" if inner else str(value["name"])
    if isinstance(value, list):
        return "+".join(_short(v) for v in value) or "none"
    return str(value)


def _matches(chosen: JsonObject, rule: JsonValue) -> bool:
    """An exclude rule matches when every key agrees; a bare name matches a component of that name
    whatever its params."""
    return isinstance(rule, dict) and all(_same(chosen.get(k), v) for k, v in rule.items())


def _same(value: JsonValue, wanted: JsonValue) -> bool:
    if isinstance(wanted, str) and isinstance(value, dict):
        return value.get("name") == wanted
    if isinstance(wanted, list) and isinstance(value, list):
        return len(wanted) == len(value) and all(_same(v, w) for v, w in zip(value, wanted))
    return _short(value) == _short(wanted)


def _set_dotted(entry: JsonObject, dotted: str, value: JsonValue, file: str) -> None:
    node = entry
    parts = dotted.split(".")
    for part in parts[:-1]:
        if isinstance(node.get(part), str):  # "method: lora" promoted to {"name": "lora"}
            node[part] = {"name": node[part]}
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError("cannot set a sub-key of a non-mapping", file=file, key=f"matrix.{dotted}")
    node[parts[-1]] = value


def _component(value: JsonValue, registry: Registry, file: str, key: str) -> Component:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise UserError(f"expected a {registry.kind} name or a mapping with 'name', got {_cut(value)}", file=file, key=key)
    extra = sorted((k for k in value if k not in ("name", "params")), key=str)
    if extra:
        raise UserError(f"unknown key {extra[0]!r}; allowed: name, params", file=file, key=f"{key}.{extra[0]}")
    if not isinstance(value["name"], str):
        raise UserError(f"{registry.kind} name must be a string", file=file, key=f"{key}.name")
    cls = registry.get(value["name"], file=file, key=f"{key}.name")
    params = value.get("params") or {}
    if not isinstance(params, dict):
        raise UserError("params must be a mapping", file=file, key=f"{key}.params")
    config = bind(cls.Config, params, file=file, key=f"{key}.params")
    return Component(value["name"], dict(params), _resolve_paths(config, file, f"{key}.params"))


def _components(values: JsonValue, registry: Registry, file: str, key: str) -> tuple[Component, ...]:
    if values is None:
        return ()
    if not isinstance(values, (list, tuple)):
        raise UserError(f"expected a list of {registry.kind}s", file=file, key=key)
    components = tuple(_component(v, registry, file, f"{key}[{i}]") for i, v in enumerate(values))
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise UserError(f"a {registry.kind} is listed twice", file=file, key=key)
    return components


def resolve_path(value: str, file: str, kind: str = "file") -> str:
    """A relative path from a scenario is taken from the scenario file's folder.

    For compatibility with files written when paths were taken from the working directory, a path
    that exists only from there is still found (with a warning). ``kind="local-or-hub"``: a value
    that looks like a hub name (``org/name``) and exists nowhere locally is left as it is.
    """
    if not value:
        return value
    given = Path(value).expanduser()
    if given.is_absolute():
        return str(given)
    folder = Path(file).parent.absolute()
    here = Path(os.path.normpath(folder / given))
    if here.exists():
        return str(here)
    if given.exists():
        print(f"warning: {file}: {value} is taken from the working directory; relative paths in a scenario are "
              f"resolved from the scenario file's folder, so write {os.path.relpath(given.resolve(), Path(file).parent.resolve())}",
              file=sys.stderr)
        return value
    if kind == "local-or-hub" and not looks_local(value) and not (folder / given.parts[0]).is_dir():
        return value  # a hub name; "models/mine" beside a models/ folder is a (missing) local one
    return str(here)


def looks_local(value: str) -> bool:
    """Whether a model or dataset reference is a local path rather than a hub name (``org/name``):
    hub names cannot be checked offline, local paths can."""
    if value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1:
        return True
    return not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", value)


def _resolve_paths(config: T, file: str, key: str) -> T:
    if not dataclasses.is_dataclass(config):
        return config
    resolved = {f.name: resolve_path(getattr(config, f.name), file, f.metadata["path"])
                for f in dataclasses.fields(config) if f.metadata.get("path") and isinstance(getattr(config, f.name), str)}
    changed = {k: v for k, v in resolved.items() if v != getattr(config, k)}
    return dataclasses.replace(config, **changed) if changed else config


def build(entry: JsonObject, name: str, file: str) -> Scenario:
    spec = bind(ScenarioSpec, {k: v for k, v in entry.items() if k not in GRID_KEYS}, file=file, key="")
    defenses = _components(spec.defenses, DEFENSES, file, "defenses")
    _check_composition(defenses, file)
    return Scenario(
        name=name,
        file=file,
        tier=_component(spec.tier, TIERS, file, "tier"),
        model=_component(spec.model, MODELS, file, "model"),
        task=_component(spec.task, TASKS, file, "task"),
        method=_component(spec.method, METHODS, file, "method"),
        federation=spec.federation,
        attacks=_components(spec.attacks, ATTACKS, file, "attacks"),
        defenses=defenses,
        seeds=spec.seed_list,
        device=spec.device,
        description=spec.description,
        raw=entry,
        resists=tuple(_resists(spec.resists, file)),
    )


def _resists(entries: tuple[Resists, ...], file: str) -> list[Resists]:
    """Each ``resists`` entry with its names checked against the registries and its curve path resolved."""
    for i, entry in enumerate(entries):
        METHODS.get(entry.method, file=file, key=f"resists[{i}].method")
        ATTACKS.get(entry.attack, file=file, key=f"resists[{i}].attack")
    return [_resolve_paths(entry, file, "resists") for entry in entries]


def _check_composition(defenses: tuple[Component, ...], file: str) -> None:
    """Two aggregation rules or two transports are a mistake in the file: refuse it before anything runs."""
    problem = composition_problem([DEFENSES.get(d.name) for d in defenses])
    if problem:
        raise UserError(problem, file=file, key="defenses")


def check(scenario: Scenario) -> list[str]:
    """What ``load`` cannot see without the file system: model paths, data files and their columns,
    ``max_length`` within the model's context. Raises ``UserError`` naming the file and the key;
    returns notes (``"FILE: note"``) worth showing. Run by ``validate`` and before any run."""
    for i, entry in enumerate(scenario.resists):  # the report reads these curves: a missing one fails here first
        if not Path(entry.curve).is_file():
            raise UserError(f"curve file not found: {entry.curve}", file=scenario.file, key=f"resists[{i}].curve")
    model = MODELS.get(scenario.model.name)(scenario.model.config)
    task = TASKS.get(scenario.task.name)(scenario.task.config)
    try:
        model.check()
        notes = task.check()
        context = model.context_length()
        _check_architecture(scenario, model, task)
    except UserError as error:
        if error.file:
            raise
        message = str(error).removeprefix(f"{error.key}: ") if error.key else str(error)
        raise UserError(message, file=scenario.file, key=error.key) from None
    max_length = task.config.max_length
    if context and max_length and max_length > context:
        raise UserError(f"max_length {max_length} exceeds the context of model {scenario.model.name} ({context} "
                        f"positions); allowed: 1..{context}", file=scenario.file, key="task.params.max_length")
    return [f"{scenario.file}: {note}" for note in notes]


def _check_architecture(scenario: Scenario, model: ModelCheck, task: TaskSpec) -> None:
    """An encoder for a generative task, or LoRA/adapter targets the architecture lacks: refused by name
    before any weights load. Only where the config is readable offline (zoo models and local paths;
    a hub name is checked when the run loads it)."""
    if model.on_hub():
        return
    reason = model.check_task(task.kind)
    if reason:
        raise UserError(reason, file=scenario.file, key="model")
    method = METHODS.get(scenario.method.name)(scenario.method.config)
    reason = method.check_model(model.architecture(), task.kind)
    if reason:
        raise UserError(reason, file=scenario.file, key="method")


def check_all(scenarios: list[Scenario]) -> list[str]:
    """``check`` on each scenario (a grid's cells often share a model and a file: each pair is checked once)."""
    notes: list[str] = []
    seen: set[str] = set()
    for scenario in scenarios:
        key = _digest({"file": scenario.file, "model": scenario.model.config, "task": scenario.task.config,
                       "method": scenario.method.config,
                       "names": [scenario.model.name, scenario.task.name, scenario.method.name]})
        if key not in seen:
            seen.add(key)
            notes += [n for n in check(scenario) if n not in notes]
    return notes
