"""Figures for the published results, each as PNG and SVG under ``results/figures/``.

- ``table4_heatmap``: Table 4 as a grid (rows method/defense, columns attack role), coloured by our
  agreement with the paper (agree / disagree / not measurable) and annotated with our verdict's
  symbol and the paper's mark (the symbols of ``bench.reporting.matrix4``).
- ``privacy_utility_frontier``: per method, membership-inference AUC against headline utility for
  every run group with a DP epsilon (and the undefended point, epsilon = inf), mean over seeds.
- ``roc``: log-log ROC curves of one membership attack (``mia-reference`` when the runs have it), one
  per (method, defenses) that was run, at its lowest seed, from the ROC points each run stored in its
  ``mia.auc`` row (``bench.scoring.roc``). Nothing here trains or re-runs anything.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from bench.api.vocabulary import JsonObject, RunStatus

if TYPE_CHECKING:  # named in annotations only
    from matplotlib.figure import Figure

    from bench.reporting.table4 import Cell

COMPARISON_COLOURS = {"agree": "#1a9850", "disagree": "#d73027", "not measurable": "#e0e0e0"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    # SVG text as text, not one path per glyph: smaller files, and several times faster on big tables
    matplotlib.rcParams["svg.fonttype"] = "none"
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Figure, folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    for path in paths:
        figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return paths


def heatmap_grid(cells: list[Cell]) -> tuple[list[str], list[tuple[str, str, str]], list[list[float]], list[list[str]]]:
    """(roles, rows, colour index per cell, text per cell): colour = agreement with the paper (index into
    ``COMPARISON_COLOURS``), text = our verdict's symbol / the paper's mark (``bench.reporting.matrix4``)."""
    from bench.reporting.matrix4 import SYMBOL
    from bench.reporting.paper4 import MARK_SYMBOL
    from bench.reporting.table4 import ROLES, row_label

    roles = [r for r in ROLES if any(c.role == r for c in cells)]
    rows = list(dict.fromkeys((c.tier, row_label(c.method, c.protocol), c.defense) for c in cells))
    comparisons = list(COMPARISON_COLOURS)
    grid = [[math.nan] * len(roles) for _ in rows]
    texts = [[""] * len(roles) for _ in rows]
    for cell in cells:
        i, j = rows.index((cell.tier, row_label(cell.method, cell.protocol), cell.defense)), roles.index(cell.role)
        grid[i][j] = comparisons.index(cell.comparison) if cell.comparison in comparisons else math.nan
        texts[i][j] = f"{SYMBOL.get(cell.verdict, '?')} / {MARK_SYMBOL.get(cell.paper, cell.paper or '·')}"
    return roles, rows, grid, texts


def heatmap(cells: list[Cell], folder: Path) -> list[Path]:
    return _save(heatmap_figure(cells), folder, "table4_heatmap")


def heatmap_figure(cells: list[Cell]) -> Figure:
    from matplotlib.colors import ListedColormap

    from bench.reporting.table4 import ROLE_TITLES

    plt = _pyplot()
    roles, rows, grid, texts = heatmap_grid(cells)
    labels = [f"{m} / {d}" for _, m, d in rows]
    # Fixed margins from the label lengths: tight_layout measures every text again and dominated the
    # report's time on a large grid.
    left, right, top, bottom = 0.3 + 0.045 * max(map(len, labels), default=0), 2.1, 0.4, 0.5
    width, height = left + right + 1.4 * len(roles), top + bottom + 0.16 * len(rows)
    figure, axes = plt.subplots(figsize=(width, height))
    figure.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height)
    for i, line in enumerate(texts):
        for j, text in enumerate(line):
            axes.text(j, i, text, ha="center", va="center", fontsize=6)
    axes.imshow(grid, cmap=ListedColormap(list(COMPARISON_COLOURS.values())), vmin=-0.5,
                vmax=len(COMPARISON_COLOURS) - 0.5, aspect="auto")
    axes.set_xticks(range(len(roles)), [ROLE_TITLES[r] for r in roles], fontsize=7)
    axes.set_yticks(range(len(rows)), labels, fontsize=6)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COMPARISON_COLOURS.values()]
    axes.legend(handles, [f"{k} with the paper" for k in COMPARISON_COLOURS], fontsize=6, loc="upper left",
                bbox_to_anchor=(1.01, 1))
    axes.set_title("Table 4 against the paper (text: our verdict / the paper's mark; symbols in table4.md)", fontsize=8)
    return figure


FRONTIER_DEFENSES = ("none", "dp-local", "dp-central", "secagg")


def frontier_points(board: list[JsonObject]) -> dict[str, list[tuple[float, float, float]]]:
    """method (+secagg) -> [(epsilon, mean mia.auc, mean utility)] over ok runs with an MIA (inf = no DP)."""
    groups: dict[tuple[str, float], list[JsonObject]] = {}
    for row in board:
        if row.get("status") != RunStatus.OK or row.get("mia.auc") is None or row.get("utility") is None:
            continue
        if any(d not in FRONTIER_DEFENSES for d in str(row.get("defenses")).split("+")):
            continue
        epsilon = row.get("dp.epsilon")
        label = row["method"] + ("+secagg" if "secagg" in str(row.get("defenses")) else "")
        key = (label, round(epsilon, 2) if epsilon is not None else math.inf)
        groups.setdefault(key, []).append(row)
    points: dict[str, list[tuple[float, float, float]]] = {}
    for (method, epsilon), rows in sorted(groups.items()):
        points.setdefault(method, []).append(
            (epsilon, statistics.fmean(r["mia.auc"] for r in rows), statistics.fmean(r["utility"] for r in rows)))
    return points


def frontier(board: list[JsonObject], folder: Path) -> list[Path]:
    plt = _pyplot()
    points = frontier_points(board)
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for method, series in points.items():
        series = sorted(series, key=lambda p: p[2])
        axes.plot([p[2] for p in series], [p[1] for p in series], marker="o", label=method)
        for epsilon, auc, utility in series:
            axes.annotate("ε=∞" if math.isinf(epsilon) else f"ε={epsilon:g}", (utility, auc), fontsize=6,
                          textcoords="offset points", xytext=(3, 3))
    axes.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    axes.set(xlabel="utility (headline metric)", ylabel="membership inference AUC",
             title="Privacy-utility frontier across epsilon (DP defenses)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    return _save(figure, folder, "privacy_utility_frontier")


DEFENSES_IN_ROC = ("none", "dp-local", "dp-central")
MAX_CURVES = 12  # beyond this a log-log ROC is unreadable


def _preferred_attack(found: dict[str, set[tuple[str, str, str]]], preferred: str) -> str | None:
    """The membership attack whose curves to draw: ``preferred`` if stored, else the one with most curves."""
    if preferred in found:
        return preferred
    return max(sorted(found), key=lambda a: len(found[a])) if found else None


def stored_curves(rows: list[JsonObject], attack_name: str = "mia-reference"
                  ) -> tuple[str | None, dict[str, tuple[list[float], list[float]]]]:
    """(attack, label -> (fpr, tpr)) from the ROC points the runs stored, one curve per (method, defenses)
    at its lowest seed. Only what was run is drawn; nothing is re-run."""
    from bench.scoring.roc import stored_roc

    candidates: dict[tuple[str, str, str, str], tuple[int, tuple[list[float], list[float]]]] = {}
    for row in rows:
        if row.get("status") != RunStatus.OK or row.get("metric") != "mia.auc":
            continue
        curve = stored_roc(row.get("extra"))
        if curve is None:
            continue
        key = (str(row["attack"]), str(row["tier"]), str(row["method"]), str(row["defenses"]))
        if key not in candidates or int(row["seed"]) < candidates[key][0]:
            candidates[key] = (int(row["seed"]), curve)
    found: dict[str, set[tuple[str, str, str]]] = {}
    for attack, *cell in candidates:
        found.setdefault(attack, set()).add(tuple(cell))
    chosen = _preferred_attack(found, attack_name)
    tiers = {t for t, _, _ in found.get(chosen, ())}
    curves = {(f"{t} / " if len(tiers) > 1 else "") + f"{m} / {d}": curve
              for (a, t, m, d), (_, curve) in sorted(candidates.items()) if a == chosen}
    if len(curves) > MAX_CURVES:
        curves = {k: v for k, v in curves.items() if k.rsplit(" / ", 1)[1] in DEFENSES_IN_ROC} or curves
    return chosen, dict(list(curves.items())[:MAX_CURVES])


def roc_figure(curves: dict[str, tuple[list[float], list[float]]], folder: Path, title: str) -> list[Path]:
    """Log-log ROC curves (the LiRA paper's view: the low-FPR regime is what matters)."""
    plt = _pyplot()
    floor = 1e-5  # log axes cannot show 0; points at 0 sit on the floor
    figure, axes = plt.subplots(figsize=(5, 5))
    for label, (fpr, tpr) in curves.items():
        axes.plot([max(v, floor) for v in fpr], [max(v, floor) for v in tpr], label=label, linewidth=1)
    axes.plot([floor, 1], [floor, 1], linestyle="--", color="grey", linewidth=0.8)
    axes.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1), xlabel="false positive rate",
             ylabel="true positive rate", title=title)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for axis in (axes.xaxis, axes.yaxis):  # plain labels: mathtext powers of ten are slow to lay out
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    axes.legend(loc="lower right", fontsize="x-small")
    figure.subplots_adjust(left=0.18, right=0.97, top=0.93, bottom=0.1)
    return _save(figure, folder, "roc")


def write_all(board: list[JsonObject], cells: list[Cell], folder: Path,
              rows: list[JsonObject] | None = None) -> list[str]:
    """Every figure, from stored results only; returns notes on figures that could not be drawn."""
    notes = []
    folder = Path(folder)
    if cells:
        heatmap(cells, folder)
    else:
        notes.append("table4_heatmap skipped: no Table 4 cell (see table4.md for what is missing)")
    if frontier_points(board):
        frontier(board, folder)
    else:
        notes.append("privacy_utility_frontier skipped: no runs with a membership attack")
    attack, curves = stored_curves(rows or [])
    if curves:
        roc_figure(curves, folder, f"ROC of {attack} (lowest seed per cell)")
    else:
        notes.append("roc skipped: no run stored membership-attack ROC points (runs made before they were stored "
                     "have none; rerun them with --force)")
    return notes
