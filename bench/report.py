"""Reports built from the results store: tables (leaderboard, Table 1, Table 4) and figures."""

from __future__ import annotations

from pathlib import Path

from bench.errors import UserError


def load_frame(path: str | Path):
    import pandas as pd

    from bench.results import ResultStore

    path = Path(path)
    store = ResultStore(path.parent if path.suffix else path)
    rows = store.rows()
    if not rows:
        raise UserError("no results found (run `python -m bench run` first)", file=str(path))
    return pd.DataFrame(rows)


def metric_table(path: str | Path, metrics: list[str] | None = None) -> str:
    """A wide table: one row per (scenario, attack), one column per metric, mean over seeds."""
    frame = load_frame(path)
    frame = frame[frame["status"] == "ok"]
    if metrics:
        frame = frame[frame["metric"].isin(metrics)]
    if frame.empty:
        return "(no ok rows)"
    wide = frame.pivot_table(index=["scenario", "attack"], columns="metric", values="value", aggfunc="mean")
    return wide.to_string(float_format=lambda v: f"{v:.4g}")
