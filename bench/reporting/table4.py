"""Table 4 (method x defense x attack), measured: attack success without -> with each defense.

A cell pairs the runs of one (tier, method, protocol, defense, attack role) with the runs of the same (tier,
method, protocol, role) and no defense, seed by seed within a regime (the run's scenario without its defenses,
``Scenario.regime``, stored by the runner: the engine derives data, initialisation and sampling from the seed
alone, so the pair differs only in the defense, even when the store holds other regimes of the method). Roles: ``mia`` (membership inference),
``inversion`` (gradient inversion by an honest server), ``malicious-inversion`` (by a server that rewrites
the broadcast: its own cells, never paired with the honest server's), ``backdoor`` and ``byzantine`` (poisoning attacks, by the role each
declares: ``Attack.table_role``, stored by the runner in the row's ``attack_roles``), ``extraction``.

**Attack advantage** = headline metric - the level a failed attack reaches (its *failure level*):
the metric row's measured ``floor`` (in its ``extra``) when the run stored one, else the metric's
declared chance level (``bench.api.metrics``: AUC 0.5, rates 0), with the sign the metric declares.
Gradient inversion's headline is ``inversion.recovered`` (records reconstructed beyond guessing, failure
level 0). A Byzantine run on a generative task (no error rate) reads ``poison.utility_drop`` (``metric_of``),
failure level 0. Other Byzantine attacks without a stored floor: ``poison.asr`` (error rate on clean inputs) - the
error rate of the same scenario and seed without attackers (its clean twin, through
``poison.utility_drop``; failing that, the privacy run of the same method, defense and seed), so that
a defense that merely makes the model worse is not counted as an attack.

**Verdict** (``bench.reporting.verdict``): from the paired change of the advantage (defended - undefended) and
its 95% t-interval over seeds: ``mitigates``, ``partial``, ``no effect``, ``inconclusive`` or ``not
applicable``; before that, from run status: ``incompatible`` (the defended run could not be set up,
the reason is the runner's), ``failed`` (a run failed at run time), ``not applicable`` (the attack
does not run without the defense). Each cell also carries its minimum detectable effect.
A "not applicable" cell whose method and attack role a published curve backs reads ``resists`` instead
(``bench.reporting.resists``: the scenario file's ``resists:`` entries; the curve names it in ``curve``).

Columns of the interval (``table4.csv``): ``failure_level`` (mean over the undefended runs),
``change`` = mean paired change of the advantage (with - without), ``change_low``/``change_high`` its
95% t-interval (empty with one seed), ``threshold`` = the change that counts as mitigation (-0.75 x
the undefended advantage), ``paired_sd`` and ``mde`` (the cell's minimum detectable effect at 80%
power) beside ``mde_goal`` (the metric's declared goal: 0.05 AUC, 0.1 for rates).

Utility change = mean paired difference of the headline utility (with - without). Cost factor =
mean client + server seconds per round with / without (wall time would also count the attacks);
``cost_factor_bytes``: bytes up per round with / without.
What a PII defense leaves behind (empty where no run reports it): ``residual_pii_fraction`` (mean over the
defended runs of ``privacy.residual_pii_fraction``: identifier-like tokens still in the scrubbed training
records) and, at the closed tiers, ``egress_pii_without``/``egress_pii_with`` (``privacy.egress_pii_fraction``:
the members' PII the provider's request log holds, whichever attack headlines the cell).
The paper's column and the agree/disagree rule live in ``bench.reporting.paper4``.

Protocols (issue 19): the round protocol is part of a cell's key (``protocol``, the leaderboard's label:
``fedavg``, ``kd``, ``split (cut 1)``; rows stored before protocols existed are ``fedavg``), so a KD or split
run is its own row, paired only with the same protocol without the defense, and the paper's column says it
is not in the paper's Table 4 (which compares parameter-sharing methods). Labels name a protocol with the
settings that change its channel (split's cut depth), so different cuts are never pooled. FedAvg and FedSGD
are both parameter sharing (``leaderboard.PARAMETER_SHARING``): their runs share the paper's row of a method
(inversion runs FedSGD, membership inference FedAvg; a grid that measured one role under both would pool them).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields

from bench.api.metrics import spec_of
from bench.api.vocabulary import DefenseFamily, JsonObject, RunStatus
from bench.reporting import resists
from bench.reporting import verdict as rule
from bench.reporting.leaderboard import DEFAULT_PROTOCOL, PARAMETER_SHARING, parse_families, row_extra
from bench.reporting.resists import Backing

MIN_ADVANTAGE = rule.MIN_ADVANTAGE
ROLES = ("mia", "inversion", "malicious-inversion", "backdoor", "byzantine", "extraction")
ROLE_TITLES = {"mia": "membership inference", "inversion": "gradient inversion",
               "malicious-inversion": "gradient inversion (malicious server)", "backdoor": "backdoor",
               "byzantine": "Byzantine", "extraction": "extraction"}
HEADLINE = {"mia": "mia.auc", "inversion": "inversion.recovered", "malicious-inversion": "inversion.recovered", "backdoor": "poison.asr", "byzantine": "poison.asr",
            "extraction": "extraction.rate"}
ATTACK_COLUMN = {"mia": "mia_attack", "inversion": "inversion_attack", "malicious-inversion": "inversion_attack", "backdoor": "poison_attack",
                 "byzantine": "poison_attack", "extraction": "extraction_attack"}
UTILITY_DROP = "poison.utility_drop"
"""A Byzantine run's success on a generative task, where there is no error rate (``poison.asr``): the headline
utility it cost against its attacker-free twin (ROUGE-L, reward accuracy), failure level 0."""


def metric_of(row: JsonObject, role: str) -> str:
    """The metric a run's cell reads: the role's headline, or for a Byzantine run without one the utility drop."""
    if role == "byzantine" and row.get(HEADLINE[role]) is None and row.get(UTILITY_DROP) is not None:
        return UTILITY_DROP
    return HEADLINE[role]


def role_of(attack: str, declared: dict[str, str]) -> str | None:
    """The Table 4 role an attack declared (``Attack.table_role``, stored by the runner); None when the run
    stored none (a row written before roles were stored): the name is never parsed for it."""
    return declared.get(attack)


def roles_of_run(row: JsonObject) -> list[str]:
    """The Table 4 roles of a leaderboard row's attacks, from its ``attack_roles`` cell."""
    declared = parse_families(row.get("attack_roles"))
    roles = {role_of(a, declared) for a in str(row.get("attacks") or "").split("+") if a and a != "none"}
    return [r for r in ROLES if r in roles]


LEGACY_FAMILY = {"dp-local": DefenseFamily.DP, "dp-central": DefenseFamily.DP, "secagg": DefenseFamily.SECAGG,
                 "he": DefenseFamily.HE, "scrub-pii": DefenseFamily.PII_SCRUBBING}


def _legacy_family(defense: str) -> str:
    """The family of a defense in a run stored before defenses declared theirs: the rule the reports used
    then (the ``robust-`` prefix, a table of the shipped names). Read only for such rows (a store written
    before ``defense_families`` was stored, a ``leaderboard.csv`` of schema 4 or older); a run stored since
    carries its defense's declaration."""
    return DefenseFamily.ROBUST_AGGREGATION if defense.startswith("robust-") else LEGACY_FAMILY.get(defense, defense)


def defense_family(row: JsonObject) -> str:
    """The family of a leaderboard row's defenses, as each declared it (``defense_families``), joined by ``+``."""
    names = [d for d in str(row.get("defenses") or "none").split("+") if d and d != "none"]
    declared = parse_families(row.get("defense_families"))
    if not declared:  # a row from before defenses declared their family
        return "+".join(_legacy_family(d) for d in names)
    return "+".join(declared.get(d, "") for d in names)


@dataclass
class Cell:
    tier: str
    method: str
    defense: str
    role: str
    attack: str
    metric: str
    seeds: int
    success_without: float | None
    success_with: float | None
    advantage_without: float | None
    advantage_with: float | None
    reduction: float | None
    failure_level: float | None
    change: float | None
    change_low: float | None
    change_high: float | None
    threshold: float | None
    paired_sd: float | None
    mde: float | None
    mde_goal: float | None
    utility_metric: str
    utility_without: float | None
    utility_with: float | None
    utility_change: float | None
    cost_factor: float | None
    cost_factor_bytes: float | None
    epsilon: float | None
    verdict: str
    reason: str
    paper: str = ""
    paper_note: str = ""
    comparison: str = ""
    comparison_note: str = ""
    residual_pii_fraction: float | None = None
    egress_pii_without: float | None = None
    egress_pii_with: float | None = None
    defense_family: str = ""
    """The family the defense declared (``Defense.family``; ``+``-joined for a combination): what the
    paper's column compares it as (``bench.reporting.paper4``)."""
    protocol: str = "fedavg"
    curve: str = ""
    """A *resists* cell: the published curve that backs it (``bench.reporting.resists``); else empty."""


TABLE4_COLUMNS = [f.name for f in fields(Cell)]
VERDICTS = ("mitigates", "partial", "no effect", "inconclusive", "incompatible", "not applicable", "resists", "failed")
"""``resists``: not applicable, and a published curve shows the attack working at another setting
(``bench.reporting.resists``)."""
EFFECT_VERDICTS = ("mitigates", "partial", "no effect", "inconclusive")  # decided by the interval


def verdict(without: Sequence[float], with_: Sequence[float]) -> tuple[str, float | None, str]:
    """(verdict, reduction, why) from paired attack advantages (``bench.reporting.verdict.decide``)."""
    decision = rule.decide(without, with_)
    return decision.verdict, decision.reduction, decision.reason


def _named_attack(role: str, rows: list[dict]) -> str:
    """The attack named by the run whose headline is highest: each run names its own strongest attack, and a
    run where every attack reads nothing names the first listed (a tie at 0), so the first run is no guide."""
    named = [r for r in rows if r.get(ATTACK_COLUMN[role])]
    if not named:
        return ""

    def headline(row: dict) -> float:
        value = row.get(metric_of(row, role))
        return float(value) if isinstance(value, (int, float)) else -math.inf

    return str(max(named, key=headline)[ATTACK_COLUMN[role]])


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


def round_seconds(row: JsonObject) -> float | None:
    """Client + server seconds per round: the defense's compute cost (wall time also counts the attacks)."""
    client, server = row.get("cost.client_s"), row.get("cost.server_s")
    return client + server if client is not None and server is not None else row.get("cost.wall_s")


Floors = dict[tuple[str, int, str, str], float]


def floors(rows: Iterable[JsonObject]) -> Floors:
    """(scenario_hash, seed, attack, metric) -> the ``floor`` a metric row stored in its ``extra``."""
    found: Floors = {}
    for row in rows:
        level = row_extra(row).get("floor")
        if isinstance(level, (int, float)) and not isinstance(level, bool):
            found[(str(row["scenario_hash"]), int(row["seed"]), str(row["attack"]), str(row["metric"]))] = float(level)
    return found


def failure_level(row: JsonObject, role: str, clean: dict[tuple, JsonObject],
                  stored: Floors | None = None) -> float | None:
    """What the run's attack scores when it fails: its stored floor, else (Byzantine) the clean twin's
    error rate, else the metric's declared chance level."""
    metric = metric_of(row, role)
    key = (str(row.get("scenario_hash")), int(row["seed"]), str(row.get(ATTACK_COLUMN[role]) or ""), metric)
    if stored and key in stored:
        return stored[key]
    if metric == UTILITY_DROP:
        return spec_of(metric).chance
    if role == "byzantine":
        accuracy = _twin_accuracy(row, clean)
        return 1.0 - accuracy if accuracy is not None else spec_of(HEADLINE[role]).chance
    return spec_of(HEADLINE[role]).chance


def _advantage(row: JsonObject, role: str, clean: dict[tuple, JsonObject],
               stored: Floors | None = None) -> float | None:
    metric = metric_of(row, role)
    value = row.get(metric)
    if value is None:
        return None
    sign = 1.0 if spec_of(metric).higher_is_better else -1.0
    return sign * (value - failure_level(row, role, clean, stored))


def protocol_of(row: JsonObject) -> str:
    """The protocol a leaderboard row's cell is keyed by: its stored label, with every parameter-sharing
    label (FedAvg, FedSGD) as ``fedavg``, the paper's rows; rows (or CSVs) from before the column existed
    ran FedAvg."""
    label = str(row.get("protocol") or DEFAULT_PROTOCOL)
    return DEFAULT_PROTOCOL if label in PARAMETER_SHARING else label


def row_label(method: str, protocol: str) -> str:
    """How tables name a cell's row: the method, with the protocol when it is not parameter sharing."""
    return method if protocol == DEFAULT_PROTOCOL else f"{method} via {protocol}"


def _twin_accuracy(row: JsonObject, clean: dict[tuple, JsonObject]) -> float | None:
    """Clean accuracy of the same scenario without attackers: from ``poison.utility_drop`` (the sweep's
    exact twin) when the run has one, else an attacker-free run of the same tier, method and defense."""
    drop, accuracy = row.get("poison.utility_drop"), row.get("utility.accuracy")
    if drop is not None and accuracy is not None and row.get("utility_metric") == "utility.accuracy":
        return accuracy + drop
    twin = clean.get((row["tier"], row["method"], protocol_of(row), row["defenses"], int(row["seed"])))
    return twin.get("utility.accuracy") if twin else None


def _index(board: list[JsonObject]) -> tuple[dict[tuple, list[dict]], dict[tuple, dict]]:
    """Runs by (tier, method, protocol, defenses, role), and the attacker-free runs by (tier, method,
    protocol, defenses, seed)."""
    runs: dict[tuple, list[dict]] = {}
    clean: dict[tuple, dict] = {}
    for row in board:
        roles = roles_of_run(row)
        for role in roles:
            runs.setdefault((row["tier"], row["method"], protocol_of(row), row["defenses"], role), []).append(row)
        if row.get("status") == RunStatus.OK and not {"backdoor", "byzantine"} & set(roles):
            clean[(row["tier"], row["method"], protocol_of(row), row["defenses"], int(row["seed"]))] = row
    return runs, clean


def _status_verdict(rows: list[dict], baseline: list[dict]) -> tuple[str, str] | None:
    """A verdict decided by run status alone (incompatible / failed / not applicable), or None."""
    if not baseline or all(r.get("status") == RunStatus.INCOMPATIBLE for r in baseline):
        why = baseline[0].get("error") if baseline else "no run without the defense"
        return "not applicable", f"the attack does not run even without the defense: {why}"
    for status, label in ((RunStatus.INCOMPATIBLE, "incompatible"), (RunStatus.FAILED, "failed")):
        bad = [r for r in rows if r.get("status") == status]
        if bad:
            return label, str(bad[0].get("error") or status)
    failed = [r for r in baseline if r.get("status") != RunStatus.OK]
    if failed:
        return "failed", f"baseline run {failed[0].get('status')}: {failed[0].get('error')}"
    return None


def make_cell(key: tuple, rows: list[dict], baseline: list[dict], clean: dict[tuple, dict],
              stored: Floors | None = None) -> Cell:
    tier, method, protocol, defense, role = key
    ok_rows = [r for r in rows if r.get("status") == RunStatus.OK]
    pairs = _pairs(ok_rows, baseline)
    # the attack the defense has to stop: the undefended runs' strongest (the defended runs' can be a tie at 0)
    attack = _named_attack(role, baseline) or _named_attack(role, ok_rows)
    utility_metric = next((r.get("utility_metric") for r in ok_rows + baseline if r.get("utility_metric")), "")
    metric = next((metric_of(r, role) for r in ok_rows + baseline), HEADLINE[role])
    cell = Cell(tier=tier, method=method, defense=defense, role=role, attack=attack or "", metric=metric,
                seeds=len(pairs), success_without=_mean([b.get(metric) for b, _ in pairs]),
                success_with=_mean([d.get(metric) for _, d in pairs]), advantage_without=None,
                advantage_with=None, reduction=None, failure_level=None, change=None, change_low=None,
                change_high=None, threshold=None, paired_sd=None, mde=None,
                mde_goal=spec_of(HEADLINE[role]).mde_goal, utility_metric=utility_metric or "",
                utility_without=_mean([b.get("utility") for b, _ in pairs]),
                utility_with=_mean([d.get("utility") for _, d in pairs]), utility_change=None,
                cost_factor=_ratio(_mean([round_seconds(d) for _, d in pairs]), _mean([round_seconds(b) for b, _ in pairs])),
                cost_factor_bytes=_ratio(_mean([d.get("cost.bytes_up") for _, d in pairs]),
                                         _mean([b.get("cost.bytes_up") for b, _ in pairs])),
                epsilon=_mean([d.get("dp.epsilon") for _, d in pairs]), verdict="", reason="", protocol=protocol,
                defense_family=next((defense_family(r) for r in rows), ""))
    if cell.utility_with is not None and cell.utility_without is not None:
        cell.utility_change = cell.utility_with - cell.utility_without
    cell.residual_pii_fraction = _mean([d.get("privacy.residual_pii_fraction") for _, d in pairs])
    cell.egress_pii_without = _mean([b.get("privacy.egress_pii_fraction") for b, _ in pairs])
    cell.egress_pii_with = _mean([d.get("privacy.egress_pii_fraction") for _, d in pairs])
    decided = _status_verdict(rows, baseline)
    if decided:
        cell.verdict, cell.reason = decided
        return cell
    _decide(cell, pairs, clean, stored)
    return cell


def _decide(cell: Cell, pairs: list[tuple[dict, dict]], clean: dict[tuple, dict], stored: Floors | None) -> None:
    """Fill the cell's advantages, interval, verdict and minimum detectable effect from its paired runs."""
    role = cell.role
    kept = [(b, d) for b, d in pairs
            if _advantage(b, role, clean, stored) is not None and _advantage(d, role, clean, stored) is not None]
    if not kept:
        cell.verdict, cell.reason = "not applicable", f"no {HEADLINE[role]} measured for this attack and method"
        return
    without = [_advantage(b, role, clean, stored) for b, _ in kept]
    with_ = [_advantage(d, role, clean, stored) for _, d in kept]
    cell.failure_level = _mean([failure_level(b, role, clean, stored) for b, _ in kept])
    cell.advantage_without, cell.advantage_with = statistics.fmean(without), statistics.fmean(with_)
    decision = rule.decide(without, with_)
    cell.verdict, cell.reduction, cell.reason = decision.verdict, decision.reduction, decision.reason
    change = decision.change or rule.interval([b - a for a, b in zip(without, with_)])
    cell.change, cell.paired_sd, cell.threshold = change.mean, change.sd, decision.threshold
    cell.change_low, cell.change_high = (change.low, change.high) if change.sd is not None else (None, None)
    cell.mde = rule.mde(change.sd, change.n)


def _twin_key(row: JsonObject) -> tuple[str, int]:
    """What pairs a defended run with an undefended one: the same regime (the scenario without its
    defenses, ``leaderboard.regime_of``; empty for runs stored before regimes were) and seed."""
    return str(row.get("regime") or ""), int(row["seed"])


class _Twins:
    """The undefended runs of a cell, found for a defended run: the one of its regime and seed; a run stored
    without a regime (before regimes were) pairs by seed alone, as every run did then, so a sweep resumed
    across that change keeps its pairs."""

    def __init__(self, baseline: list[dict]):
        self.exact = {_twin_key(b): b for b in baseline}
        self.legacy = {seed: b for (regime, seed), b in self.exact.items() if not regime}
        self.any_regime = {int(b["seed"]): b for b in baseline}

    def of(self, defended: JsonObject) -> dict | None:
        regime, seed = _twin_key(defended)
        if not regime:
            return self.any_regime.get(seed)
        return self.exact.get((regime, seed)) or self.legacy.get(seed)


def _pairs(defended: list[dict], baseline: list[dict]) -> list[tuple[dict, dict]]:
    twins = _Twins([b for b in baseline if b.get("status") == RunStatus.OK])
    return [(twin, d) for d in defended if (twin := twins.of(d)) is not None]


def build(board: list[JsonObject], paper: Callable[[Cell], None] | None = None, stored: Floors | None = None,
          curves: Sequence[Backing] = ()) -> list[Cell]:
    """Table 4 cells from leaderboard rows; ``paper(cell)`` fills the paper's columns when given;
    ``stored`` holds the failure levels the runs measured (``floors(rows)`` of the tidy rows); ``curves``
    the published curves that turn a "not applicable" cell into *resists* (``bench.reporting.resists``)."""
    runs, clean = _index(board)
    roles = {attack: role for row in board for attack, role in parse_families(row.get("attack_roles")).items()}
    cells = []
    for key in sorted(runs, key=_order):
        tier, method, protocol, defense, role = key
        if defense == "none":
            continue
        cell = make_cell(key, runs[key], runs.get((tier, method, protocol, "none", role), []), clean, stored)
        resists.apply(cell, curves, roles)
        if paper is not None:
            paper(cell)
        cells.append(cell)
    return cells


METHOD_ORDER = ("fft", "lora", "adapter", "prompt-tuning", "instruction-tuning", "rlhf", "provider-tuning",
                "textual-prompt")
DEFENSE_ORDER = ("dp-local", "dp-central", "scrub-pii", "secagg", "he", "robust-krum", "robust-median", "robust-trimmed",
                 "robust-clip", "robust-fltrust")


def _rank(value: str, order: tuple[str, ...]) -> tuple[int, str]:
    return (order.index(value) if value in order else len(order), value)


TIER_ORDER = ("open-source", "open-weight", "gray-box", "black-box")
PROTOCOL_ORDER = (DEFAULT_PROTOCOL, "fedsgd", "kd")


def _order(key: tuple) -> tuple:
    tier, method, protocol, defense, role = key
    return (_rank(tier, TIER_ORDER), _rank(method, METHOD_ORDER), _rank(protocol, PROTOCOL_ORDER),
            _rank(defense, DEFENSE_ORDER), ROLES.index(role))


def as_dicts(cells: list[Cell]) -> list[JsonObject]:
    return [asdict(c) for c in cells]


Planned = frozenset[tuple[str, int]]
"""The (scenario hash, seed) runs the loaded scenario files ask for (``bench report --scenarios``)."""


def missing(board: list[JsonObject], cells: list[Cell], limit: int = 20, planned: Planned | None = None) -> list[str]:
    """What an empty or partial grid lacks, in words: every (tier, method, defense, attack role) of the
    grid the runs span (their methods x their defenses, per tier and role) that has no run, and cells
    with seeds that ran with the defense or without it but not both (``_seed_gaps``). Cells from scenario
    files with different seed lists are no gap: each pairs the seeds its regime ran. With ``planned``, a
    one-sided seed whose other side no file plans is no gap either: ``by_design`` lists those."""
    if not board:
        return ["no runs in the results"]
    runs, _ = _index(board)
    if not runs:
        return ["no run has a membership, inversion, backdoor, Byzantine or extraction attack, so there is no Table 4 "
                "cell"]
    # A protocol's rows are crossed only with the defenses run on that protocol: a kd or split grid does not
    # run the parameter channel's defenses (and cannot: no weights reach the server), so their absence is no gap.
    # (FedAvg and FedSGD runs already share one protocol label here: ``protocol_of``.)
    spans: dict[tuple[str, str, str], tuple[set[tuple[str, str]], set[str]]] = {}
    for tier, method, protocol, defense, role in runs:
        methods, defenses = spans.setdefault((tier, role, protocol), (set(), {"none"}))
        methods.add((method, protocol))
        defenses.add(defense)
    notes = []
    for (tier, role, _), (methods, defenses) in sorted(spans.items()):
        if defenses == {"none"}:
            notes.append(f"{tier}, {ROLE_TITLES[role]}: runs without a defense only; a cell compares a defended run "
                         "with the same scenario without it")
        gaps = sorted((tier, m, p, d, role) for m, p in methods for d in defenses if (tier, m, p, d, role) not in runs)
        notes += [f"no run of {t} / {row_label(m, p)} / defense {d} with a {ROLE_TITLES[r]} attack" for t, m, p, d, r in
                  sorted(gaps, key=_order)]
    notes += [note for c in cells if c.verdict != "incompatible"
              for note in _seed_gaps(c, *_sides(runs, c), planned)[0]]
    return notes if len(notes) <= limit else notes[:limit] + [f"... and {len(notes) - limit} more"]


def by_design(board: list[JsonObject], cells: list[Cell], planned: Planned) -> list[str]:
    """Cells with seeds on one side that no loaded scenario file plans on the other: a power file
    (``scenarios/*-power-*.yaml``) runs one defense's cell and the shared undefended cell to more seeds, so
    the other defenses' cells pair fewer seeds than their baseline ran. Not a gap: nothing asked for them."""
    runs, _ = _index(board)
    return [note for c in cells if c.verdict != "incompatible" for note in _seed_gaps(c, *_sides(runs, c), planned)[1]]


def _sides(runs: dict[tuple, list[dict]], cell: Cell) -> tuple[list[dict], list[dict]]:
    """A cell's defended runs and its undefended ones."""
    return (runs[(cell.tier, cell.method, cell.protocol, cell.defense, cell.role)],
            runs.get((cell.tier, cell.method, cell.protocol, "none", cell.role), []))


def _seed_gaps(cell: Cell, defended: list[dict], baseline: list[dict],
               planned: Planned | None = None) -> tuple[list[str], list[str]]:
    """A cell's seeds that ran on one side only (with or without the defense, within the defended runs'
    regimes), and a cell that pools runs of several regimes (scenarios that differ in more than the
    defense: each pair is still one regime's, but the cell averages over them): (gaps, by design). A
    one-sided seed is by design when ``planned`` is given and holds none of the other side's scenarios at
    that seed."""
    label = f"{cell.tier} / {row_label(cell.method, cell.protocol)} / {cell.defense} ({ROLE_TITLES[cell.role]})"
    regimes = {_twin_key(d)[0] for d in defended}
    twins = _Twins(baseline)
    one_sided_with = sorted(int(d["seed"]) for d in defended if twins.of(d) is None)
    # an undefended run another regime's defended runs could never pair with is not this cell's gap
    could_pair = [b for b in baseline if "" in regimes or _twin_key(b)[0] in regimes | {""}]
    one_sided_without = sorted({int(b["seed"]) for b in could_pair} - {int(d["seed"]) for d in defended})
    notes = []
    if len(regimes - {""}) > 1:
        notes.append(f"{label}: pools {len(regimes - {''})} regimes (scenarios that differ in more than the defense)")
    sides = {"with": one_sided_with, "without": one_sided_without}
    designed = {side: [] for side in sides}
    if planned is not None:
        other = {"with": {str(b["scenario_hash"]) for b in could_pair}, "without": {str(d["scenario_hash"]) for d in defended}}
        for side, seeds in sides.items():
            # no run on the other side at all says nothing of what was planned there: a gap
            designed[side] = [s for s in seeds if other[side] and not any((h, s) in planned for h in other[side])]
            sides[side] = [s for s in seeds if s not in designed[side]]
    return notes + _one_sided_note(label, cell.seeds, sides), _one_sided_note(label, cell.seeds, designed)


def _one_sided_note(label: str, paired: int, sides: dict[str, list[int]]) -> list[str]:
    """"<cell>: 55 paired seeds of 90; seeds run on one side: 55-89 (without the defense only)", or nothing."""
    present = [(side, seeds) for side, seeds in sides.items() if seeds]
    if not present:
        return []
    which = "; ".join(f"{seed_ranges(seeds)} ({side} the defense only)" for side, seeds in present)
    one_sided = sum(len(seeds) for _, seeds in present)
    return [f"{label}: {paired} paired seeds of {paired + one_sided}; seeds run on one side: {which}"]


def seed_ranges(seeds: list[int]) -> str:
    """Sorted seeds as runs of consecutive ones: [1, 2, 3, 7, 9, 10] -> "1-3, 7, 9-10". A file that runs some
    cells to more seeds than their defended twins (``scenarios/*-power-*.yaml``) leaves 35 one-sided seeds in
    a row, which a list of every seed buried in the notes."""
    spans: list[list[int]] = []
    for seed in sorted(seeds):
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
