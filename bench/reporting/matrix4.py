"""Table 4 as the paper prints it, and each column's minimum detectable effect.

The matrix has one row per (tier, method) and one column per defense; a cell holds one symbol per
attack role (in ``table4.ROLES`` order: membership inference, gradient inversion, backdoor, Byzantine)
and then the paper's mark for that (method, defense) (``paper4.MARK_SYMBOL``). A symbol whose
comparison with the paper is *disagree* is flagged (bold in markdown, a class in HTML).

Everything here reads Table 4 cells as mappings: ``table4.as_dicts(cells)`` or the rows of
``table4.csv`` (strings), so that the markdown and the page (which reads only the CSV) agree.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.api.metrics import spec_of
from bench.api.vocabulary import JsonValue
from bench.reporting import paper4, table4, verdict

SYMBOL = {"mitigates": "✓", "partial": "◐", "no effect": "✗", "inconclusive": "?", "not applicable": "–",
          "resists": "⊥", "incompatible": "⊘", "failed": "!"}
MISSING = "·"  # no run of this role for the (method, defense)
ROLE_LETTER = {"mia": "M", "inversion": "I", "malicious-inversion": "T", "backdoor": "B", "byzantine": "Z"}

Cell = Mapping[str, JsonValue]


def _num(value: JsonValue) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    return None if math.isnan(number) else number


@dataclass(frozen=True)
class MatrixCell:
    symbols: tuple[tuple[str, str, bool], ...]  # (role, symbol, disagrees with the paper)
    paper: str                                  # the paper's mark, as a letter


def _protocol(cell: Cell) -> str:
    """A cell's protocol; table4.csv files written before the column existed are FedAvg's."""
    return str(cell.get("protocol") or table4.DEFAULT_PROTOCOL)


def layout(cells: Sequence[Cell]) -> tuple[list[str], list[str], list[tuple[str, list[MatrixCell | None]]]]:
    """(roles, defenses, [(row label, one MatrixCell or None per defense)])."""
    roles = [r for r in table4.ROLES if any(c["role"] == r for c in cells)]
    defenses = sorted({c["defense"] for c in cells}, key=lambda d: table4._rank(d, table4.DEFENSE_ORDER))
    keys = sorted({(c["tier"], c["method"], _protocol(c)) for c in cells},
                  key=lambda k: (table4._rank(k[0], table4.TIER_ORDER), table4._rank(k[1], table4.METHOD_ORDER),
                                 table4._rank(k[2], table4.PROTOCOL_ORDER)))
    several_tiers = len({tier for tier, _, _ in keys}) > 1
    found = {(c["tier"], c["method"], _protocol(c), c["defense"], c["role"]): c for c in cells}
    rows = []
    for tier, method, protocol in keys:
        entries: list[MatrixCell | None] = []
        for defense in defenses:
            present = [found.get((tier, method, protocol, defense, r)) for r in roles]
            if not any(present):
                entries.append(None)
                continue
            first = next(c for c in present if c)
            mark = first.get("paper") or paper4.paper_mark(method, first.get("defense_family") or "")[0]
            entries.append(MatrixCell(tuple((r, SYMBOL.get(c["verdict"], "?") if c else MISSING,
                                             bool(c) and c.get("comparison") == "disagree")
                                            for r, c in zip(roles, present)),
                                      paper4.MARK_SYMBOL.get(mark, mark)))
        label = table4.row_label(method, protocol)
        rows.append((f"{label} ({tier})" if several_tiers else label, entries))
    return roles, defenses, rows


def cell_markdown(entry: MatrixCell | None) -> str:
    if entry is None:
        return ""
    symbols = " ".join(f"**{s}**" if disagree else s for _, s, disagree in entry.symbols)
    return f"{symbols} │ {entry.paper}"


def legend(roles: Sequence[str]) -> str:
    order = ", ".join(f"{table4.ROLE_TITLES[r]}" for r in roles)
    verdicts = ", ".join(f"{s} {v}" for v, s in SYMBOL.items())
    marks = ", ".join(f"{s} {m}" for m, s in paper4.MARK_SYMBOL.items())
    return (f"Each cell: one symbol per attack role ({order}), then │ and the paper's mark. Symbols: {verdicts}, "
            f"{MISSING} not run. Paper marks: {marks}. A **bold** symbol disagrees with the paper's mark.")


def matrix_markdown(cells: Sequence[Cell]) -> str:
    roles, defenses, rows = layout(cells)
    lines = ["| method | " + " | ".join(defenses) + " |", "|---|" + "---|" * len(defenses)]
    lines += ["| " + label + " | " + " | ".join(cell_markdown(e) for e in entries) + " |" for label, entries in rows]
    return legend(roles) + "\n\n" + "\n".join(lines) + "\n"


def matrix_html(cells: Sequence[Cell], table_id: str = "table4-matrix") -> str:
    roles, defenses, rows = layout(cells)
    head = "".join(f"<th>{html.escape(d)}</th>" for d in defenses)
    body = []
    for label, entries in rows:
        tds = []
        for entry in entries:
            if entry is None:
                tds.append("<td></td>")
                continue
            spans = " ".join(f'<span class="v{" disagree" if bad else ""}" title="{html.escape(table4.ROLE_TITLES[r])}">'
                             f"{html.escape(s)}</span>" for r, s, bad in entry.symbols)
            tds.append(f'<td>{spans} │ <span class="paper">{html.escape(entry.paper)}</span></td>')
        body.append(f"<tr><th>{html.escape(label)}</th>{''.join(tds)}</tr>")
    return (f"<p>{html.escape(legend(roles)).replace('**bold**', '<b>bold</b>')}</p>"
            f'<table id="{table_id}"><thead><tr><th>method</th>{head}</tr></thead><tbody>\n'
            + "\n".join(body) + "\n</tbody></table>")


# --- minimum detectable effect per column ------------------------------------------------------------
@dataclass(frozen=True)
class ColumnMDE:
    role: str
    defense: str
    cells: int
    sd: float | None
    seeds: int
    mde: float | None
    goal: float

    @property
    def met(self) -> bool | None:
        return None if self.mde is None else self.mde <= self.goal + 1e-12


@dataclass(frozen=True)
class SeedGroup:
    """The decided cells of a column (or role) with one number of paired seeds: one scenario file's cells."""

    seeds: int
    cells: int
    sd: float | None
    mde: float | None


def seed_groups(groups: Sequence[tuple[float, int]]) -> list[SeedGroup]:
    """(sd, n) per cell -> one ``SeedGroup`` per n: the sd pooled over that group's cells and the MDE at its n.
    Pooling across groups would carry one file's noise to another's seeds (a poisoning regime whose twins
    swing between seeds, beside an RLHF regime that barely moves), and an MDE at the fewest seeds of all
    would charge every file with the least-seeded one's count."""
    by_n: dict[int, list[tuple[float, int]]] = {}
    for sd, n in groups:
        by_n.setdefault(n, []).append((sd, n))
    out = []
    for n, members in sorted(by_n.items()):
        sd = verdict.pooled_sd(members)
        out.append(SeedGroup(n, len(members), sd, verdict.mde(sd, n)))
    return out


def worst_group(groups: Sequence[tuple[float, int]]) -> SeedGroup:
    """The seed group whose MDE is largest: what the column (or role) can detect at worst."""
    return max(seed_groups(groups), key=lambda g: (g.mde if g.mde is not None else -math.inf, -g.seeds))


def column_mde(cells: Sequence[Cell]) -> list[ColumnMDE]:
    """Per (attack role, defense), over the column's cells whose verdict the interval decided: the MDE of its
    worst seed group (``worst_group``; a cell's own test has n - 1 degrees of freedom)."""
    columns: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for c in cells:
        sd, seeds = _num(c.get("paired_sd")), int(_num(c.get("seeds")) or 0)
        if c["verdict"] in table4.EFFECT_VERDICTS and sd is not None and seeds >= 2:
            columns.setdefault((c["role"], c["defense"]), []).append((sd, seeds))
    out = []
    for (role, defense), groups in sorted(columns.items(), key=lambda kv: (
            table4.ROLES.index(kv[0][0]), table4._rank(kv[0][1], table4.DEFENSE_ORDER))):
        worst = worst_group(groups)
        out.append(ColumnMDE(role, defense, len(groups), worst.sd, worst.seeds, worst.mde,
                             spec_of(table4.HEADLINE[role]).mde_goal))
    return out


def seeds_needed(sd: float | None, goal: float, limit: int = 1000) -> int | None:
    """The fewest paired seeds whose MDE is at most ``goal`` (None beyond ``limit``)."""
    if sd is None:
        return None
    if sd == 0:
        return 2
    return next((n for n in range(2, limit + 1) if verdict.mde(sd, n) <= goal), None)


def role_summary(cells: Sequence[Cell]) -> list[str]:
    """One line per attack role, over every decided cell: the MDE of its worst seed group, and the seeds
    each group would need."""
    lines = []
    for role in table4.ROLES:
        groups = [(_num(c.get("paired_sd")), int(_num(c.get("seeds")) or 0)) for c in cells
                  if c["role"] == role and c["verdict"] in table4.EFFECT_VERDICTS and _num(c.get("paired_sd")) is not None]
        groups = [(sd, n) for sd, n in groups if n >= 2]
        if not groups:
            continue
        goal, worst = spec_of(table4.HEADLINE[role]).mde_goal, worst_group(groups)
        needed = [seeds_needed(g.sd, goal) for g in seed_groups(groups)]
        most = None if None in needed else max(needed)
        lines.append(f"{table4.ROLE_TITLES[role]} ({table4.HEADLINE[role]}): {len(groups)} cells; MDE {worst.mde:.3f} "
                     f"at {worst.seeds} seeds (paired sd {worst.sd:.3f} pooled over the {worst.cells} cells with "
                     f"{worst.seeds} seeds; goal ≤ {goal:g}: {'met' if worst.mde <= goal + 1e-12 else 'not met'}); "
                     f"the goal needs {most if most else 'more than 1000'} seeds")
    return lines


def _mde_text(column: ColumnMDE) -> str:
    if column.mde is None:
        return ""
    return f"{column.mde:.3f} {'✓' if column.met else '✗'} (sd {column.sd:.3f}, n {column.seeds})"


def mde_markdown(cells: Sequence[Cell]) -> str:
    columns = column_mde(cells)
    if not columns:
        return "No column has a verdict decided on two or more paired seeds, so no MDE can be measured.\n"
    defenses = list(dict.fromkeys(sorted((c.defense for c in columns),
                                         key=lambda d: table4._rank(d, table4.DEFENSE_ORDER))))
    by_key = {(c.role, c.defense): c for c in columns}
    roles = [r for r in table4.ROLES if any(c.role == r for c in columns)]
    lines = ["| attack (goal) | " + " | ".join(defenses) + " |", "|---|" + "---|" * len(defenses)]
    for role in roles:
        goal = spec_of(table4.HEADLINE[role]).mde_goal
        texts = [_mde_text(by_key[(role, d)]) if (role, d) in by_key else "" for d in defenses]
        lines.append(f"| {table4.ROLE_TITLES[role]} (≤ {goal:g}) | " + " | ".join(texts) + " |")
    summary = "".join(f"\n- {line}" for line in role_summary(cells))
    note = ("\nEach entry: MDE, ✓ when it meets the goal, the pooled paired sd and the seeds of the column's worst seed "
            "group (its cells with one number of paired seeds, i.e. one scenario file's). An sd of 0 "
            "means the defense left the attack's measurement exactly unchanged on every seed.\n")
    return "\n".join(lines) + "\n" + note + (f"\nPer attack role, over all defenses:{summary}\n" if summary else "")


def rule_markdown() -> str:
    """The verdict rule with its thresholds, as table4.md states it (from the constants in ``bench.reporting.verdict``)."""
    t3, t5 = verdict.t_quantile(1 - verdict.ALPHA / 2, 2), verdict.t_quantile(1 - verdict.ALPHA / 2, 4)
    goals = ", ".join(f"{name} ≤ {spec_of(name).mde_goal:g}" for name in dict.fromkeys(table4.HEADLINE.values()))
    level = round(100 * (1 - verdict.ALPHA))
    return f"""\
Advantage = the attack's headline metric − its failure level: the `floor` its metric row stored
(e.g. the base model's extraction rate) when the run measured one, else the metric's declared
chance level (`bench/api/metrics.py`: AUC 0.5, rates 0); Byzantine without a stored floor:
the error rate of the same run without attackers. Gradient inversion's headline, `inversion.recovered`,
is the fraction of the batch's records reconstructed better (token ROUGE-1) than the best guess without
the update for that record (any held-out record, or the bare template), so its failure level is 0 and
a half-recovered batch reads 0.5 (a batch-mean ROUGE-1 against the guessing floor read it as a failure).
Change = advantage with − without the defense,
paired by seed (within a regime: the scenario without the defense); its {level}% interval is the paired t-interval mean ± t({1 - verdict.ALPHA / 2:g}, n − 1)·sd/√n
(t = {t3:.2f} at 3 seeds, {t5:.2f} at 5). Mitigation threshold m = {verdict.MITIGATION:g} × the undefended
advantage (the defense removes at least {verdict.MITIGATION:.0%} of it).

- **not applicable** (–): the undefended advantage is below {verdict.MIN_ADVANTAGE:g}, or its own {level}%
  interval reaches the failure level, or the attack cannot run without the defense;
- **resists** (⊥): not applicable, and a published curve (the scenario file's `resists:`) shows the same
  attack beating its floor by at least {verdict.MIN_ADVANTAGE:g} on this method at another setting (a larger
  rank, a smaller batch): the method resists the attack at the grid's setting, not every attack everywhere;
- **mitigates** (✓): the change's interval lies below 0 and the mean change reaches −m;
- **partial** (◐): the interval lies below 0 and the mean change reaches −{verdict.PARTIAL:g} × the undefended
  advantage, not −m;
- **no effect** (✗): the interval lies above −m (a mitigation of size m is ruled out; any reduction is
  indistinguishable from 0 or smaller than {verdict.PARTIAL:.0%});
- **inconclusive** (?): otherwise: the interval covers both −m and 0 (one paired seed always lands here);
- **incompatible** (⊘): the runner refused the combination before training; **failed** (!): a run failed.

Minimum detectable effect (MDE) = (t({1 - verdict.ALPHA / 2:g}, n − 1) + t({verdict.POWER:g}, n − 1))·sd/√n: the
smallest true change a cell's paired test detects with {verdict.POWER:.0%} power at two-sided α = {verdict.ALPHA:g},
for each group of a column's decided cells with one number of paired seeds n (one scenario file's cells), from
the paired sd pooled over the group; a column's MDE is its largest. Goals (issue 15): {goals}.
Code: `bench/reporting/verdict.py` (rule), `bench/reporting/table4.py` (cells), `bench/reporting/paper4.py` (paper marks, agree rule).
"""


MDE_CAPTION = (f"Smallest true change of the attack's advantage a column's paired test detects with "
               f"{verdict.POWER:.0%} power at two-sided α = {verdict.ALPHA:g}, from the paired sd pooled over the "
               f"column's decided cells with one number of seeds (the largest such MDE); goals (issue 15): "
               + ", ".join(f"{n} ≤ {spec_of(n).mde_goal:g}" for n in dict.fromkeys(table4.HEADLINE.values())) + ".")
