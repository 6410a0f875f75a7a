"""Reports built from the results store: tables (leaderboard, Table 1, Table 4) and figures.

``write_reports`` is what ``make bench`` calls after the sweep (``python -m bench report``): it reads
``RUNS/results.jsonl`` and writes, under ``OUT`` and nowhere else: ``leaderboard.csv``, ``table4.csv``,
``table4.md``, ``table1.csv``/``.md`` (copied from ``RUNS``, where ``run`` stored them),
``figures/*.png|svg`` and ``index.html``. Every output is a pure function of the stored rows: runs
store what a figure needs (ROC points, the resolved scenario), so nothing here imports the training
code or re-runs anything. ``--scenarios`` is the one exception: it loads scenario files (and with them
the component registry) to drop stored runs of grid cells that were since edited away.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from bench.api.errors import UserError
from bench.api.vocabulary import JsonObject, JsonValue, RunStatus
from bench.reporting import leaderboard, learned, paper4, resists, table4

if TYPE_CHECKING:  # named in annotations only: scenarios load lazily
    from bench.spec.scenario import Scenario


def load_rows(path: str | Path) -> list[JsonObject]:
    from bench.store.results import ResultStore

    path = Path(path)
    store = ResultStore(path.parent if path.suffix else path)
    rows = store.rows()
    if not rows:
        raise UserError("no results found (run `python -m bench run` first)", file=str(path))
    return rows


HEADLINE_COLUMNS = ["utility", "mia.auc", "inversion.recovered", "poison.asr", "dp.epsilon", "cost.wall_s"]


def _cell(value: JsonValue) -> str:
    return "" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def metric_table(path: str | Path, metrics: list[str] | None = None, width: int | None = None) -> str:
    """One line per scenario (mean over its ok seeds) with the headline columns that have a value, or
    the ``metrics`` asked for, fitted to ``width`` (default: the terminal's)."""
    import shutil
    import statistics

    from bench.api.display import fixed_width_table

    rows = load_rows(path)
    width = width or shutil.get_terminal_size((120, 24)).columns
    by_scenario: dict[str, list[JsonObject]] = {}
    for row in leaderboard.build(rows):
        by_scenario.setdefault(row["scenario"], []).append(row)
    asked = metrics or HEADLINE_COLUMNS
    extra = _tidy_means(rows, [m for m in asked if m not in leaderboard.COLUMNS])
    table = []
    for scenario, runs in sorted(by_scenario.items()):
        ok = [r for r in runs if r["status"] == RunStatus.OK]
        statuses = ",".join(sorted({str(r["status"]) for r in runs}))
        values = []
        for column in asked:
            present = [r[column] for r in ok if isinstance(r.get(column), (int, float))]
            values.append(statistics.fmean(present) if present else extra.get((scenario, column)))
        table.append([scenario, str(len(runs)), statuses, *values])
    shown = [c for i, c in enumerate(asked) if metrics or any(r[3 + i] is not None for r in table)]
    if not table:
        return "(no runs)"
    columns = [3 + asked.index(c) for c in shown]
    text, dropped = fixed_width_table(["scenario", "seeds", "status", *shown],
                                      [[r[0], r[1], r[2], *(_cell(r[i]) for i in columns)] for r in table], width)
    return text + (f"\n({dropped} more columns do not fit: choose with --metric)" if dropped else "")


def _tidy_means(rows: list[JsonObject], metrics: list[str]) -> dict[tuple[str, str], float]:
    """(scenario, metric) -> mean over ok rows, for metrics the leaderboard has no column for."""
    import statistics

    found: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row["metric"] in metrics and row.get("status") == RunStatus.OK and isinstance(row.get("value"), (int, float)):
            found.setdefault((row["scenario"], row["metric"]), []).append(float(row["value"]))
    return {key: statistics.fmean(values) for key, values in found.items()}


def _current(rows: list[JsonObject], attacks: dict[str, list[str]], notes: list[str]) -> list[JsonObject]:
    """Only the runs of the scenarios the files describe now: a store may still hold runs of grid
    cells that were since edited away. Kept whole when none match (e.g. a preset changed the hashes)."""
    current = [r for r in rows if r["scenario_hash"] in attacks]
    if attacks and current and len(current) < len(rows):
        notes.append(f"ignored {len(rows) - len(current)} result rows of scenarios no longer in the files")
        return current
    return rows


def load_scenarios(paths: list[str | Path]) -> list[Scenario]:
    """Every scenario in ``paths`` (missing files are skipped)."""
    existing = [p for p in paths if Path(p).exists()]
    if not existing:
        return []
    from bench.spec.scenario import load_many  # loads the component registry: only when asked to

    return load_many(existing)


def scenario_attacks(paths: list[str | Path]) -> dict[str, list[str]]:
    """scenario_hash -> attack names, for every scenario in ``paths`` (missing files are skipped)."""
    return {s.hash: [a.name for a in s.attacks] for s in load_scenarios(paths)}


def scenario_curves(scenarios: list[Scenario]) -> list[resists.Backing]:
    """The curves the scenarios' ``resists:`` entries declare, read (``bench.reporting.resists``)."""
    return resists.backings([(entry, s.file, f"resists[{i}]") for s in scenarios for i, entry in enumerate(s.resists)])


# --- Table 4 files ---------------------------------------------------------------------------------
def _fmt(value: JsonValue, digits: int = 3) -> str:
    return "" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def write_table4_csv(cells: list[table4.Cell], path: Path) -> Path:
    from bench.api.files import atomic_write as _atomic_write

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=table4.TABLE4_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in table4.as_dicts(cells):
        writer.writerow({k: _fmt(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    _atomic_write(path, buffer.getvalue())
    return path


COMPARISON_MARK = {"agree": "agree", "disagree": "**disagree**", "not measurable": "n/m",
                   "not in the paper's Table 4": "not in the paper"}


def cell_text(cell: table4.Cell) -> str:
    """``0.71->0.52 partial (du -0.03, x1.4) agree`` for one cell of the markdown table."""
    if cell.verdict in ("incompatible", "failed", "not applicable", "resists") and cell.success_with is None:
        return f"{cell.verdict} · {COMPARISON_MARK.get(cell.comparison, cell.comparison)}"
    moved = f"{_fmt(cell.success_without, 2)}→{_fmt(cell.success_with, 2)}"
    extras = [f"Δ {cell.change:+.2f} [{cell.change_low:+.2f}, {cell.change_high:+.2f}]"] \
        if cell.change_low is not None and cell.change is not None and cell.change_high is not None else []
    if cell.utility_change is not None:
        extras.append(f"Δu {cell.utility_change:+.2f}")
    if cell.cost_factor is not None:
        extras.append(f"×{cell.cost_factor:.1f}")
    if cell.residual_pii_fraction is not None:
        extras.append(f"PII left {cell.residual_pii_fraction:.2f}")
    if cell.egress_pii_with is not None and cell.egress_pii_without is not None:
        extras.append(f"PII in log {cell.egress_pii_without:.2f}→{cell.egress_pii_with:.2f}")
    return f"{moved} {cell.verdict} ({', '.join(extras)}) · {COMPARISON_MARK.get(cell.comparison, cell.comparison)}"


def table4_markdown(cells: list[table4.Cell]) -> str:
    roles = [r for r in table4.ROLES if any(c.role == r for c in cells)]
    attack_names = {r: next((c.attack for c in cells if c.role == r and c.attack), "") for r in roles}
    header = ["tier", "method", "defense", "paper"] + [f"{table4.ROLE_TITLES[r]} ({attack_names[r]})" for r in roles]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows: dict[tuple, dict[str, table4.Cell]] = {}
    for cell in cells:
        rows.setdefault((cell.tier, table4.row_label(cell.method, cell.protocol), cell.defense), {})[cell.role] = cell
    for (tier, method, defense), by_role in rows.items():
        paper = next(iter(by_role.values())).paper
        texts = [cell_text(by_role[r]) if r in by_role else "" for r in roles]
        lines.append("| " + " | ".join([tier, method, defense, paper] + texts) + " |")
    return "\n".join(lines) + "\n"


TABLE4_LEGEND = """
Each cell: attack success without → with the defense (headline metric of the attack, mean over
paired seeds), the verdict, the paired change of the attack's advantage with its 95% interval (Δ),
the change in headline utility (Δu) and the compute cost factor (×, client + server seconds per
round), for a PII defense the fraction of identifier-like tokens left in the training data (PII left)
and at the closed tiers the fraction of the members' PII in the provider's log (PII in log), then our comparison with the paper's mark (agree, **disagree**, n/m = not measurable).
"""


BY_DESIGN_HEAD = ("Seeds run on one side by design (a power file runs another defense's cell and the shared "
                  "undefended cell to more seeds; each cell pairs the seeds both sides ran):")


def write_table4_markdown(cells: list[table4.Cell], path: Path, title: str = "Table 4, measured",
                          missing: list[str] | None = None, curves: list[resists.Backing] | None = None,
                          regimes: list[learned.Learned] | None = None, by_design: list[str] | None = None) -> Path:
    """``regimes``: the undefended utility of each regime beside its base model's (its section is left out
    when None). ``by_design``: cells whose seeds are one-sided because no file plans the other side
    (``table4.by_design``), listed apart from what is missing."""
    from bench.api.files import atomic_write as _atomic_write
    from bench.reporting import matrix4

    counts: dict[str, int] = {}
    for cell in cells:
        counts[cell.comparison] = counts.get(cell.comparison, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    gaps = "".join(f"- {line}\n" for line in missing or [])
    if not cells:
        body = f"No Table 4 cell can be built from these runs:\n\n{gaps}"
    else:
        dicts = table4.as_dicts(cells)
        body = f"## The matrix\n\n{matrix4.matrix_markdown(dicts)}\nComparison with the paper: {summary}.\n\n"
        if regimes is not None:
            body += f"## {learned.SECTION}\n\n{learned.markdown(regimes)}\n"
        body += (f"## {resists.SECTION}\n\n{resists.summary_markdown(cells, curves or [])}\n"
                 f"## Minimum detectable effect per column\n\n{matrix4.mde_markdown(dicts)}\n"
                 f"## Verdict rule and thresholds\n\n{matrix4.rule_markdown()}\n")
        body += f"Missing from this grid:\n\n{gaps}\n" if gaps else ""
        designed = "".join(f"- {line}\n" for line in by_design or [])
        body += f"{BY_DESIGN_HEAD}\n\n{designed}\n" if designed else ""
        body += f"## Detail\n{TABLE4_LEGEND}\n{table4_markdown(cells)}"
    _atomic_write(path, f"# {title}\n\n{body}")
    return path


# --- everything ------------------------------------------------------------------------------------
def runs_dir(runs: str | Path) -> Path:
    """The results directory ``runs`` names (the directory itself, or the one holding ``results.jsonl``)."""
    path = Path(runs)
    return path.parent if path.suffix else path


def default_out(runs: str | Path) -> Path:
    """Where ``report`` writes unless told: beside the runs it reads, never over the published results."""
    return runs_dir(runs) / "report"


TABLE1_FILES = ("table1.csv", "table1.md")


def copy_table1(runs: Path, out: Path, notes: list[str]) -> None:
    """Table 1 comes from the code, not from results: ``run`` stores it beside the runs; copy it."""
    from bench.api.files import atomic_write as _atomic_write

    sources = [runs / name for name in TABLE1_FILES]
    if not all(p.exists() for p in sources):
        notes.append(f"table1 not written: {runs} holds no table1.csv (`python -m bench table1 --out {out}` "
                     "computes it from the code)")
        return
    if runs.resolve() != out.resolve():
        for source in sources:
            _atomic_write(out / source.name, source.read_text(encoding="utf-8"))


def write_reports(runs: str | Path, out: str | Path, scenario_paths: list[str | Path] | None = None, *,
                  figures: bool = True) -> list[str]:
    """Every report file from ``runs`` into ``out`` (and nowhere else); returns notes on skipped or
    missing parts."""
    out = Path(out)
    notes: list[str] = []
    rows = load_rows(runs)
    out.mkdir(parents=True, exist_ok=True)
    scenarios = load_scenarios(scenario_paths or [])
    attacks = {s.hash: [a.name for a in s.attacks] for s in scenarios}
    curves = scenario_curves(scenarios)
    rows = _current(rows, attacks, notes)
    board = leaderboard.build(rows, attacks)
    leaderboard.write_csv(board, out / "leaderboard.csv")
    cells = table4.build(board, paper=paper4.annotate, stored=table4.floors(rows), curves=curves)
    planned = frozenset((s.hash, seed) for s in scenarios for seed in s.seeds) if scenarios else None
    gaps = table4.missing(board, cells, planned=planned)
    designed = table4.by_design(board, cells, planned) if planned is not None else []
    notes += [f"table4: {line}" for line in gaps]
    notes += [f"table4: resists: {b.method} x {b.attack}: the curve {b.curve} does not back it ({b.describe()})"
              for b in curves if not b.backed]
    write_table4_csv(cells, out / "table4.csv")
    regimes = learned.build(board)
    write_table4_markdown(cells, out / "table4.md", missing=gaps, curves=curves, regimes=regimes, by_design=designed)
    copy_table1(runs_dir(runs), out, notes)
    if figures:
        from bench.reporting import figures as figs

        notes += figs.write_all(board, cells, out / "figures", rows)
    from bench.reporting import html

    html.write_index(out)
    return notes


# --- studies ---------------------------------------------------------------------------------------
SUMMARY_COLUMNS = ["utility", "mia.auc", "mia.tpr@0.01", "poison.asr", "poison.utility_drop", "dp.epsilon",
                   "dp.epsilon_lower", "privacy.egress_records", "cost.client_s", "cost.bytes_up", "cost.expansion"]


def _group_order(rows: list[JsonObject]) -> tuple:
    first = rows[0]
    epsilon = first.get("dp.epsilon")
    return (first["tier"], first["method"], first["defenses"], -epsilon if epsilon is not None else -math.inf,
            first["scenario"])


def study_summary(board: list[JsonObject]) -> str:
    """Markdown: per scenario (one grid cell: its hash, whatever its seeds), the mean over seeds of the headline
    columns. A study varies settings that the tier, method and defenses do not name (a rank, rounds, a target
    epsilon): grouping by those alone averaged over the settings the study compares (session 20 found
    ``results/studies/kd-regime/summary.md`` printing one mean of six regimes)."""
    import statistics

    groups: dict[str, list[JsonObject]] = {}
    for row in board:
        groups.setdefault(str(row["scenario_hash"]), []).append(row)
    labels = leaderboard.cell_labels(board)  # a cell's label: its lowest seed's run's, whichever file ran the others
    header = ["scenario", "tier", "method", "defenses", "runs", "status", "utility_metric", "mia_attack"] + SUMMARY_COLUMNS
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rows in sorted(groups.values(), key=_group_order):
        first = rows[0]
        statuses = ",".join(sorted({str(r["status"]) for r in rows}))
        texts = [next((str(r[k]) for r in rows if r.get(k)), "") for k in ("utility_metric", "mia_attack")]
        means = []
        for column in SUMMARY_COLUMNS:
            values = [r[column] for r in rows if r.get(column) is not None]
            means.append(f"{statistics.fmean(values):.4g}" if values else "")
        cells = [labels[str(first["scenario_hash"])].replace("|", "/"), first["tier"], first["method"], first["defenses"]]
        lines.append("| " + " | ".join([*cells, str(len(rows)), statuses, *texts, *means]) + " |")
    return "\n".join(lines) + "\n"


def write_study_report(runs: str | Path, out: str | Path, command: str = "") -> list[Path]:
    """A study's leaderboard.csv, summary.md (means over seeds, and the command) and index.html."""
    from bench.api.files import atomic_write as _atomic_write

    out = Path(out)
    board = leaderboard.build(load_rows(runs))
    paths = [leaderboard.write_csv(board, out / "leaderboard.csv"), out / "summary.md"]
    made_by = f"Made by:\n\n```bash\n{command}\n```\n\n" if command else ""
    _atomic_write(paths[1], f"# Study summary (means over seeds)\n\n{made_by}{study_summary(board)}")
    from bench.reporting import figures, html

    if any(r.get("dp.epsilon") is not None for r in board) and figures.frontier_points(board):
        paths += figures.frontier(board, out / "figures")

    paths.append(html.write_index(out))
    return paths
