"""What the studies' ``collect.py`` scripts share: reading a store's finished runs and writing a curve CSV.

A study script (``results/studies/<study>/collect.py``, run from the repository root with ``PYTHONPATH=.``)
turns the runs of a sweep into the one CSV its README and Table 4's ``resists:`` entries read. Each picks
its own columns; the reading and writing are the same everywhere.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.api.vocabulary import JsonObject


def ok_rows(*folders: str) -> Iterator[JsonObject]:
    """The rows of every run that finished ``ok`` in each folder's ``results.jsonl``, in file order (so a
    run id stored twice is read twice, and a script that keys by run id keeps the later reading)."""
    for folder in folders:
        for line in Path(folder, "results.jsonl").read_text().splitlines():
            yield from (row for row in json.loads(line).get("rows", []) if row.get("status") == "ok")


def write_curve(path: Path, columns: Sequence[str], rows: Sequence[JsonObject]) -> None:
    """``rows`` as a CSV with ``columns`` (keys outside them are left out, missing ones left empty)."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path} ({len(rows)} rows)")


def column_mean(rows: Sequence[JsonObject], column: str, digits: int = 2) -> str:
    """The mean of ``column`` over the rows that have it, to ``digits`` places; empty when none has it."""
    values = [float(r[column]) for r in rows if r.get(column) is not None]
    return f"{sum(values) / len(values):.{digits}f}" if values else ""


def beating(rows: Sequence[JsonObject], column: str, floor: float, margin: float) -> int:
    """How many rows have ``column`` at least ``margin`` above ``floor`` (the attack works there)."""
    return sum(1 for r in rows if r.get(column) is not None and float(r[column]) - floor >= margin)


def attack_metrics(rows: Sequence[JsonObject], metrics: Sequence[str]) -> dict[tuple[str, str], JsonObject]:
    """Per (run id, attack) other than ``none``: the run's method and seed, the attack, and each of ``metrics``
    it reported, rounded to 4 places (a later reading of the same run replaces an earlier one)."""
    table: dict[tuple[str, str], JsonObject] = {}
    for row in rows:
        if row["metric"] in metrics and row["attack"] != "none":
            entry = table.setdefault((row["run_id"], row["attack"]),
                                     {"method": row["method"], "seed": row["seed"], "attack": row["attack"]})
            entry[row["metric"]] = round(row["value"], 4)
    return table


def grouped(rows: Sequence[JsonObject], keys: Sequence[str]) -> dict[tuple, list[JsonObject]]:
    """``rows`` grouped by their values of ``keys``, groups and rows in first-seen order."""
    groups: dict[tuple, list[JsonObject]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return groups
