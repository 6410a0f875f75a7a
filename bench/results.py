"""The results store: a tidy, append-only table, one row per (run, metric), written atomically.

``results.jsonl`` is the source of truth; ``results.csv`` is exported from it after every run. Each
write goes to a temporary file that replaces the old one (``os.replace``), so a killed sweep never
leaves a torn file, and a rerun skips the (scenario_hash, seed) pairs already recorded.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class Row:
    run_id: str
    scenario: str
    scenario_hash: str
    seed: int
    tier: str
    model: str
    task: str
    method: str
    defenses: str
    attack: str
    metric: str
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    higher_is_better: bool | None = None
    status: str = "ok"
    error: str = ""
    git_commit: str = ""
    packages: str = ""
    device: str = ""
    wall_s: float | None = None
    peak_mem_mb: float | None = None
    schema: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


COLUMNS = [f.name for f in fields(Row)]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)  # JSON has no NaN/inf; keep them readable and reversible
    return value


def _restore(value: Any) -> Any:
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return value


class ResultStore:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.jsonl = self.directory / "results.jsonl"
        self.csv = self.directory / "results.csv"

    def rows(self) -> list[dict[str, Any]]:
        if not self.jsonl.exists():
            return []
        rows = []
        for line in self.jsonl.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append({k: _restore(v) for k, v in json.loads(line).items()})
        return rows

    def done(self) -> set[tuple[str, int]]:
        """Runs that finished (ok or incompatible); a failed run is retried by the next sweep."""
        return {(r["scenario_hash"], int(r["seed"])) for r in self.rows() if r.get("status") in ("ok", "incompatible")}

    def append(self, new_rows: Iterable[Row], *, replace: tuple[str, int] | None = None) -> None:
        """Add one run's rows (replacing that run's earlier rows when ``replace`` is given)."""
        kept = [r for r in self.rows() if replace is None or (r["scenario_hash"], int(r["seed"])) != replace]
        lines = [json.dumps({k: _clean(v) for k, v in r.items()}, sort_keys=True) for r in kept]
        lines += [json.dumps({k: _clean(v) for k, v in asdict(row).items()}, sort_keys=True) for row in new_rows]
        _atomic_write(self.jsonl, "\n".join(lines) + "\n")
        self.export_csv()

    def replace_metric(self, metric: str, derived: list[dict[str, Any]]) -> None:
        """Swap every stored row of ``metric`` for ``derived`` (metrics computed across runs), atomically."""
        kept = [r for r in self.rows() if r["metric"] != metric] + derived
        lines = [json.dumps({k: _clean(v) for k, v in r.items()}, sort_keys=True) for r in kept]
        _atomic_write(self.jsonl, "\n".join(lines) + "\n" if lines else "")
        self.export_csv()

    def export_csv(self) -> None:
        rows = self.rows()
        _atomic_write_csv(self.csv, rows)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; results are meant to be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _atomic_write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "extra": json.dumps(row.get("extra", {}), sort_keys=True)})
    _atomic_write(path, buffer.getvalue())
