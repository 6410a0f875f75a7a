"""Figures for the published results, each as PNG and SVG under ``results/figures/``.

- ``table4_heatmap``: Table 4 as a grid (rows method/defense, columns attack role), coloured by
  verdict and annotated with the advantage reduction.
- ``privacy_utility_frontier``: per method, membership-inference AUC against headline utility for
  every run group with a DP epsilon (and the undefended point, epsilon = inf), mean over seeds.
- ``roc``: log-log ROC curves of the Table 4 membership attack, per method, without a defense and
  with ``dp-local`` / ``dp-central``, from re-running those scenarios at seed 0 (the results store keeps metrics, not
  per-candidate scores; the re-run is deterministic, so the curves match the stored AUCs).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

VERDICT_COLOURS = {"mitigates": "#1a9850", "partial": "#a6d96a", "no effect": "#f46d43", "incompatible": "#878787",
                   "not applicable": "#e0e0e0", "failed": "#542788"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    for path in paths:
        figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return paths


def heatmap(cells: list[Any], folder: Path) -> list[Path]:
    from matplotlib.colors import ListedColormap

    from bench.table4 import ROLE_TITLES, ROLES

    plt = _pyplot()
    roles = [r for r in ROLES if any(c.role == r for c in cells)]
    rows = list(dict.fromkeys((c.tier, c.method, c.defense) for c in cells))
    verdicts = list(VERDICT_COLOURS)
    grid = [[math.nan] * len(roles) for _ in rows]
    figure, axes = plt.subplots(figsize=(2.2 + 1.6 * len(roles), 1.2 + 0.22 * len(rows)))
    for cell in cells:
        i, j = rows.index((cell.tier, cell.method, cell.defense)), roles.index(cell.role)
        grid[i][j] = verdicts.index(cell.verdict) if cell.verdict in verdicts else math.nan
        label = f"{cell.reduction:+.0%}" if cell.reduction is not None else cell.verdict[:6]
        axes.text(j, i, label, ha="center", va="center", fontsize=6)
    axes.imshow(grid, cmap=ListedColormap(list(VERDICT_COLOURS.values())), vmin=-0.5, vmax=len(verdicts) - 0.5,
                aspect="auto")
    axes.set_xticks(range(len(roles)), [ROLE_TITLES[r] for r in roles], fontsize=7)
    axes.set_yticks(range(len(rows)), [f"{m} / {d}" for _, m, d in rows], fontsize=6)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in VERDICT_COLOURS.values()]
    axes.legend(handles, verdicts, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    axes.set_title("Table 4: verdict (text: advantage reduction)", fontsize=8)
    figure.tight_layout()
    return _save(figure, folder, "table4_heatmap")


FRONTIER_DEFENSES = ("none", "dp-local", "dp-central", "secagg")


def frontier_points(board: list[dict[str, Any]]) -> dict[str, list[tuple[float, float, float]]]:
    """method (+secagg) -> [(epsilon, mean mia.auc, mean utility)] over ok runs with an MIA (inf = no DP)."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in board:
        if row.get("status") != "ok" or row.get("mia.auc") is None or row.get("utility") is None:
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


def frontier(board: list[dict[str, Any]], folder: Path) -> list[Path]:
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


def roc_curves(scenarios: list[Any], attack_name: str, seed: int = 0) -> dict[str, tuple[Any, Any]]:
    """label -> (fpr, tpr) of ``attack_name`` in each scenario at ``seed`` (only that attack is run)."""
    from bench import federation as fl
    from bench import runner
    from bench.scoring.mia import roc_curve
    from bench.seeding import generator
    from bench.sweep import quiet_libraries
    from bench.views import ViewBuilder

    quiet_libraries()
    curves = {}
    for scenario in scenarios:
        try:
            built = runner.plan(scenario)
            built.attacks = [a for a in built.attacks if a.name == attack_name]
            if not built.attacks:  # the tier refuses it (``Plan.refused``): nothing to train for
                continue
            p = runner.prepare(scenario, seed, built)
            fl.run(p.fed, p.transcript, p.truth)
            views = ViewBuilder(scenario, seed, built, p.transcript, p.tokenizer, p.clients, p.task_data, p.truth,
                                max_candidates=scenario.federation.mia_candidates or None)
            attack = built.attacks[0]
            prediction = attack.run(views.for_attack(attack), generator("run", seed, "attack", attack_name))
        except Exception:  # noqa: BLE001 - the results store already records why this run fails
            continue
        fpr, tpr, _ = roc_curve(prediction.scores, views.truth.member_flags)
        curves[f"{scenario.method.name} / {scenario.defense_label}"] = (fpr, tpr)
    return curves


def roc(scenarios: list[Any], folder: Path, attack_name: str = "mia-reference") -> list[Path]:
    from bench.scoring.mia import plot_roc

    curves = roc_curves(scenarios, attack_name)
    if not curves:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "roc.png", folder / "roc.svg"]
    for path in paths:
        plot_roc(curves, str(path))
    return paths


DEFENSES_IN_ROC = ("none", "dp-local", "dp-central")


def roc_scenarios(paths: list[str | Path], attack_name: str = "mia-reference") -> list[Any]:
    """The Table 4 privacy scenarios without a defense and with dp-local, one per method."""
    from bench.scenario import load_many

    existing = [p for p in paths if Path(p).exists()]
    chosen = {}
    for s in load_many(existing) if existing else []:
        if any(a.name == attack_name for a in s.attacks) and s.defense_label in DEFENSES_IN_ROC:
            chosen.setdefault((s.method.name, s.defense_label), s)
    return list(chosen.values())


def write_all(board: list[dict[str, Any]], cells: list[Any], folder: Path,
              scenario_paths: list[str | Path] | None = None) -> list[str]:
    """Every figure; returns notes on figures that could not be drawn."""
    notes = []
    folder = Path(folder)
    if cells:
        heatmap(cells, folder)
    if frontier_points(board):
        frontier(board, folder)
    else:
        notes.append("privacy_utility_frontier skipped: no runs with a membership attack")
    try:
        roc(roc_scenarios(scenario_paths or []), folder)
    except Exception as error:  # a figure must not lose the tables already written
        notes.append(f"roc skipped: {type(error).__name__}: {error}")
    return notes
