"""Table 4 cells backed by a published curve: *resists* instead of an unexplained "not applicable" (issue 15).

A scenario file declares ``resists:`` entries (``bench.spec.scenario.Resists``: method, attack, curve,
metric, why). The curve is a CSV the report reads (it never trains): one row per run, a ``method`` column,
the metric's column and its ``<metric>.floor`` column (the level the attack scores when it fails; an empty
floor is the metric's declared chance level, as in the verdict rule). A curve that measured several attacks
has an ``attack`` column; then only the entry's attack's rows count (one attack working does not back
another's cells).

An entry **backs** its (method, attack) when at least one row of that method beats its floor by at least
``verdict.MIN_ADVANTAGE`` (the attack works somewhere on the curve). Then every Table 4 cell of that
method and of that attack's role (``covers``) whose verdict is "not applicable" because the attack does not beat its failure level
without the defense (the cell has an undefended advantage: a cell whose attack could not run at all is
left alone) reads **resists**: the method resists the attack at the grid's setting, and the curve shows
where it stops resisting. An entry whose curve never shows the attack working backs nothing: its cells
stay "not applicable" and the report says so. A missing file or column is a ``UserError`` naming the
scenario file and the entry's key.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.api.errors import UserError
from bench.api.metrics import spec_of
from bench.reporting import verdict as rule

if TYPE_CHECKING:  # named in annotations only: the report loads scenarios lazily
    from bench.reporting.table4 import Cell
    from bench.spec.scenario import Resists

VERDICT = "resists"
SECTION = "Cells backed by a curve"
"""The heading of ``table4.md``'s section (``summary_markdown``), which the page (``bench.reporting.html``) shows."""
NOT_APPLICABLE = "not applicable"
REPO_ROOT = Path(__file__).absolute().parent.parent.parent
"""Curve paths are shown relative to this folder (the repository root) in the reports."""


@dataclass(frozen=True)
class Backing:
    """One ``resists`` entry, with what its curve shows for its method."""

    method: str
    attack: str
    curve: str
    """The curve's path as the reports show it (relative to the repository root when inside it)."""
    metric: str
    why: str
    rows: int
    """Rows of the curve for this method."""
    working: int
    """Of them, rows where the metric beats its floor by at least ``verdict.MIN_ADVANTAGE``."""
    best: float | None
    """The largest advantage over the floor among the method's rows (None without rows)."""
    file: str
    """The scenario file that declared the entry."""
    protocol: str = "fedavg"
    """The round protocol of the cells it backs (a KD curve says nothing about parameter sharing's cells)."""

    @property
    def backed(self) -> bool:
        return self.working > 0

    def describe(self) -> str:
        shown = f"{self.best:+.2f}" if self.best is not None else "none"
        return (f"{self.metric} beats its floor by ≥ {rule.MIN_ADVANTAGE:g} on {self.working} of {self.rows} rows of "
                f"{self.method} (best {shown})")


def shown_path(path: str) -> str:
    absolute = Path(path).absolute()
    inside = absolute == REPO_ROOT or REPO_ROOT in absolute.parents
    return os.path.relpath(absolute, REPO_ROOT) if inside else str(path)


def _number(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_backing(entry: Resists, file: str, key: str) -> Backing:
    """What ``entry``'s curve shows for its method (``key``: the entry's place in ``file``, for errors)."""
    path = Path(entry.curve)
    if not path.is_file():
        raise UserError(f"curve file not found: {entry.curve}", file=file, key=f"{key}.curve")
    try:
        metric = spec_of(entry.metric)
    except KeyError as error:
        raise UserError(str(error.args[0]), file=file, key=f"{key}.metric") from None
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        needed = ["method", entry.metric, f"{entry.metric}.floor"]
        absent = [c for c in needed if c not in columns]
        if absent:
            raise UserError(f"{entry.curve} has no column {absent[0]!r} (it needs {', '.join(needed)}); columns: "
                            f"{', '.join(columns)}", file=file, key=f"{key}.metric")
        sign = 1.0 if metric.higher_is_better else -1.0
        advantages = []
        for row in reader:
            value = _number(row.get(entry.metric))
            if row.get("method") != entry.method or value is None:
                continue
            if "attack" in columns and row.get("attack") != entry.attack:  # a curve of several attacks
                continue
            floor = _number(row.get(f"{entry.metric}.floor"))
            advantages.append(sign * (value - (metric.chance if floor is None else floor)))
    working = sum(1 for a in advantages if a >= rule.MIN_ADVANTAGE - rule.TOLERANCE)
    return Backing(method=entry.method, attack=entry.attack, curve=shown_path(entry.curve), metric=entry.metric,
                   why=entry.why, rows=len(advantages), working=working, best=max(advantages, default=None), file=file,
                   protocol=entry.protocol)


def backings(entries: Sequence[tuple[Resists, str, str]]) -> list[Backing]:
    """One ``Backing`` per distinct (entry, file) given as (entry, scenario file, key), in order."""
    seen: dict[tuple[str, str, str, str, str], Backing] = {}
    for entry, file, key in entries:
        ident = (entry.method, entry.attack, entry.curve, entry.metric, file)
        if ident not in seen:
            seen[ident] = read_backing(entry, file, key)
    return list(seen.values())


def covers(backing: Backing, cell: Cell, roles: Mapping[str, str]) -> bool:
    """Whether ``backing`` speaks for ``cell``: same method, and the same attack or an attack of the cell's role
    (``roles``: attack -> Table 4 role, as the runs declared them). A cell shows its role's strongest attack of
    the run, and where every attack of the role stays at its floor which one it names is arbitrary: the three
    PII attacks share the extraction cell, so a curve on which pii-infer works backs a LoRA extraction cell
    that happens to name pii-extract."""
    return (backing.method, backing.protocol) == (cell.method, cell.protocol) and (
        backing.attack == cell.attack or roles.get(backing.attack) == cell.role)


def apply(cell: Cell, found: Sequence[Backing], roles: Mapping[str, str] | None = None) -> None:
    """Turn a "not applicable" cell into *resists* when a backing curve covers its method and attack role."""
    if cell.verdict != NOT_APPLICABLE or cell.advantage_without is None:
        return
    backing = next((b for b in found if b.backed and covers(b, cell, roles or {})), None)
    if backing is None:
        return
    cell.verdict = VERDICT
    cell.curve = backing.curve
    cell.reason = (f"{cell.reason}; the curve {backing.curve} shows where it stops resisting: {backing.attack}'s "
                   f"{backing.describe()}")


def _first_on(cell: Cell, found: Sequence[Backing]) -> Backing | None:
    """The backing ``apply`` chose for a *resists* cell: the first backed one of its method and curve."""
    return next((b for b in found if b.backed and (b.method, b.protocol, b.curve) == (cell.method, cell.protocol, cell.curve)),
                None)


def _row(method: str, protocol: str) -> str:
    """A Table 4 row's name (``table4.row_label``, which imports this module): the method, with its protocol
    unless parameter sharing."""
    return method if protocol == "fedavg" else f"{method} via {protocol}"


def summary_markdown(cells: Sequence[Cell], found: Sequence[Backing]) -> str:
    """table4.md's section: how many cells are not applicable, how many of them a curve backs, and one line
    per declared (method, attack) with its curve and why (or why it backs nothing)."""
    resisting = [c for c in cells if c.verdict == VERDICT]
    unbacked = [c for c in cells if c.verdict == NOT_APPLICABLE]
    lines = [f"{len(resisting) + len(unbacked)} cells where the attack does not beat its failure level without the "
             f"defense (or cannot run): {len(resisting)} of them backed by a curve (⊥ resists), {len(unbacked)} not "
             "applicable (–)."]
    for backing in found:
        count = sum(1 for c in resisting if _first_on(c, found) is backing)
        if backing.backed and not count:  # the attack beats its floor in this grid: the curve has nothing to back
            lines.append(f"- {_row(backing.method, backing.protocol)} × {backing.attack}: ⊥ in no cell (the attack "
                         f"beats its failure level without a defense here); curve `{backing.curve}` ({backing.describe()})")
        elif backing.backed:
            lines.append(f"- {_row(backing.method, backing.protocol)} × {backing.attack}: ⊥ in {count} cells; curve `{backing.curve}` "
                         f"({backing.describe()}); why: {backing.why}")
        else:
            lines.append(f"- {_row(backing.method, backing.protocol)} × {backing.attack}: the curve `{backing.curve}` does not back it "
                         f"({backing.describe()}): its cells stay not applicable")
    by_row: dict[tuple[str, str], int] = {}
    for cell in unbacked:
        row = (_row(cell.method, cell.protocol), cell.attack or cell.role)
        by_row[row] = by_row.get(row, 0) + 1
    if by_row:
        lines.append("- not applicable, no curve: " + ", ".join(f"{m} × {a} ({n})" for (m, a), n in by_row.items()))
    return "\n".join(lines) + "\n"
