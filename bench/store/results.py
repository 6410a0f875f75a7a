"""The results store: a tidy table, one row per (run, metric), kept as an append-only log.

``results.jsonl`` is the source of truth: one JSON record per line, appended with a single write and
an ``fsync``, so adding a run costs the same whatever the store holds. A record holds whole runs
(``{"record": "runs", "keys": [[scenario_hash, seed], ...], "rows": [...]}``) or every row of one
metric derived across runs (``{"record": "metric", "metric": ..., "rows": [...]}``); a later record
supersedes what earlier ones said about the same runs (``--force`` reruns) or metric. ``rows()``
replays the log. A record is complete or absent: a line cut short by a crash, or one that does not
parse, is skipped with a warning naming the file and line, so its run is redone. Lines of the first
format (one row per line) still read, as runs.

One process writes a folder at a time: a writer holds ``flock`` on ``.results.lock`` (the kernel
releases it when the process dies, even by SIGKILL); a second writer is refused with the holder's
pid. Readers take no lock. ``results.csv`` is derived from the log when a writer closes (end of a
sweep) or on ``export_csv()``; it is not rewritten per run.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import BinaryIO

from bench.api.errors import UserError
from bench.api.files import atomic_write
from bench.api.vocabulary import JsonObject, JsonValue, RunStatus

SCHEMA_VERSION = 1
LOCK_NAME = ".results.lock"
# What a SIGKILL during an atomic rewrite leaves: ``bench.api.files.temporary_prefix`` + 8 characters.
TEMPORARY_GLOBS = (".results.jsonl-*", ".results.csv-*")
DONE_STATUSES = (RunStatus.OK, RunStatus.INCOMPATIBLE)  # a failed run is retried by the next sweep


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
    status: RunStatus = RunStatus.OK
    error: str = ""
    git_commit: str = ""
    packages: str = ""
    device: str = ""
    wall_s: float | None = None
    peak_mem_mb: float | None = None
    schema: int = SCHEMA_VERSION
    extra: JsonObject = field(default_factory=dict)


COLUMNS = [f.name for f in fields(Row)]
Key = tuple[str, int]


def _clean(value: JsonValue) -> JsonValue:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)  # JSON has no NaN/inf; keep them readable and reversible
    return value


def _restore(value: JsonValue) -> JsonValue:
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return value


def _key(row: JsonObject) -> Key:
    return str(row["scenario_hash"]), int(row["seed"])


def _is_row(value: JsonValue) -> bool:
    return isinstance(value, dict) and "metric" in value and "scenario_hash" in value and "seed" in value


class _Log:
    """The store's current content, replayed from the records in order."""

    def __init__(self) -> None:
        self.runs: dict[Key, list[JsonObject]] = {}
        self.derived: dict[str, dict[Key, list[JsonObject]]] = {}
        self.run_metrics: set[str] = set()  # metrics found among run rows (a metric record strips them)
        self.rows_read = 0

    def apply(self, record: JsonObject) -> None:
        if _is_row(record) and "record" not in record:  # the first format: one row per line, no run appears twice
            self._add_run_row(record)
            return
        kind, rows = record.get("record"), record.get("rows")
        if not isinstance(rows, list) or not all(_is_row(r) for r in rows):
            raise ValueError("not a record of rows")
        if kind == "runs":
            keys = [(str(h), int(s)) for h, s in record.get("keys", [])] + [_key(r) for r in rows]
            for key in dict.fromkeys(keys):
                self.runs.pop(key, None)  # dropped and re-added: a rerun moves to the end, as before
                for by_key in self.derived.values():
                    by_key.pop(key, None)  # derived from the superseded run; recomputed after the sweep
            for row in rows:
                self._add_run_row(row)
        elif kind == "metric" and isinstance(record.get("metric"), str):
            metric = record["metric"]
            by_key: dict[Key, list[JsonObject]] = {}
            for row in rows:  # before any change: a record that fails to read changes nothing
                by_key.setdefault(_key(row), []).append(row)
            if metric in self.run_metrics:
                for key, run in self.runs.items():
                    self.runs[key] = [r for r in run if r["metric"] != metric]
            self.derived.pop(metric, None)
            self.derived[metric] = by_key
            self.rows_read += len(rows)
        else:
            raise ValueError(f"unknown record kind {kind!r}")

    def _add_run_row(self, row: JsonObject) -> None:
        self.runs.setdefault(_key(row), []).append(row)
        self.run_metrics.add(row["metric"])
        self.rows_read += 1

    def rows(self) -> list[JsonObject]:
        out = [row for run in self.runs.values() for row in run]
        return out + [row for by_key in self.derived.values() for run in by_key.values() for row in run]

    def records(self) -> list[JsonObject]:
        """The same content as the fewest records (what compaction writes)."""
        out = [{"record": "runs", "keys": [list(key)], "rows": run} for key, run in self.runs.items() if run]
        return out + [{"record": "metric", "metric": metric, "rows": [r for run in by_key.values() for r in run]}
                      for metric, by_key in self.derived.items()]


class ResultStore:
    """The results of a folder. ``writer=True`` locks the folder for this process and checks that it is
    writable (raising ``UserError`` otherwise) before anything runs; ``close()`` writes the CSV and
    releases the lock. A store opened without ``writer`` reads freely and locks only around a write."""

    def __init__(self, directory: str | Path, *, writer: bool = False):
        self.directory = Path(directory)
        self.jsonl = self.directory / "results.jsonl"
        self.csv = self.directory / "results.csv"
        self._writer = False
        self._dirty = False
        self._warned: set[tuple[int, str]] = set()
        if writer:
            self.open()

    # -- reading (no lock) -------------------------------------------------------------------------

    def rows(self) -> list[JsonObject]:
        return [{k: _restore(v) for k, v in row.items()} for row in self._replay()[0].rows()]

    def done(self) -> set[tuple[str, int]]:
        """Runs a sweep skips: recorded ok or incompatible with no failed row (a failed run, or an ok run
        one of whose attacks failed, is retried by the next sweep)."""
        rows = self.rows()
        failed = {(r["scenario_hash"], int(r["seed"])) for r in rows if r.get("status") == RunStatus.FAILED}
        return {(r["scenario_hash"], int(r["seed"])) for r in rows if r.get("status") in DONE_STATUSES} - failed

    def _replay(self) -> tuple[_Log, list[tuple[int, bytes]]]:
        """The log replayed, and the (line number, bytes) of every line it had to skip."""
        log, skipped = _Log(), []
        try:
            data = self.jsonl.read_bytes()
        except FileNotFoundError:
            return log, skipped
        lines = data.split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            torn = number == len(lines)  # no newline after it: the write may have been cut short
            try:
                log.apply(json.loads(line.decode("utf-8")))
            except (ValueError, TypeError, KeyError, AttributeError) as error:  # JSON, UTF-8 and shape errors
                skipped.append((number, line))
                self._warn(number, "a torn trailing record (a write cut short)" if torn
                           else f"a corrupt record ({type(error).__name__}: {str(error)[:80]})")
        return log, skipped

    def _warn(self, line: int, what: str) -> None:
        if (line, what) not in self._warned:  # once per store, not once per read
            self._warned.add((line, what))
            print(f"warning: {self.jsonl}:{line}: ignored {what}; its run will be redone", file=sys.stderr)

    # -- writing -----------------------------------------------------------------------------------

    def open(self) -> ResultStore:
        """Lock the folder for this process, or raise ``UserError`` naming it (and the pid holding it)."""
        if self._writer:
            return self
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the results folder ({error.strerror or error})",
                            file=str(self.directory)) from None
        _acquire(self.directory)
        self._writer = True
        try:
            self._remove_temporaries()
            self._repair_tail()
            if self.jsonl.exists() and _older(self.csv, self.jsonl):
                self.export_csv()  # a killed sweep left the CSV behind the log
        except BaseException:
            self._writer = False
            _release(self.directory)
            raise
        return self

    def close(self) -> None:
        """Compact the log if most of it is superseded, write the CSV, release the lock."""
        if not self._writer:
            return
        try:
            if self._dirty or (self.jsonl.exists() and _older(self.csv, self.jsonl)):
                self._compact_if_worth_it()
                self.export_csv()
                self._dirty = False
        finally:
            self._writer = False
            _release(self.directory)

    def __del__(self) -> None:
        # A sweep that raised never reached close(): let go of the lock (no CSV; the next writer writes it).
        if getattr(self, "_writer", False):
            self._writer = False
            _release(self.directory)

    def __enter__(self) -> ResultStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, new_rows: Iterable[Row], *, replace: tuple[str, int] | None = None) -> None:
        """Add runs' rows as one record: they supersede anything stored for the same runs (and for
        ``replace``, e.g. a rerun that returned no rows). O(1) in the size of the store."""
        rows = [asdict(r) if isinstance(r, Row) else dict(r) for r in new_rows]
        keys = ([list(replace)] if replace is not None else []) + [list(k) for k in dict.fromkeys(map(_key, rows))]
        self._write_record({"record": "runs", "keys": keys, "rows": rows})

    def replace_metric(self, metric: str, derived: list[JsonObject]) -> None:
        """Swap every stored row of ``metric`` for ``derived`` (metrics computed across runs); writes
        nothing when they are already what is stored, so a resumed sweep does not grow the log."""
        current = [r for r in self._replay()[0].rows() if r["metric"] == metric]
        if _encode(current) == _encode(derived):
            return
        self._write_record({"record": "metric", "metric": metric, "rows": derived})

    def export_csv(self) -> None:
        _atomic_write_csv(self.csv, self.rows())

    def _write_record(self, record: JsonObject) -> None:
        record = {**record, "rows": [{k: _clean(v) for k, v in row.items()} for row in record["rows"]]}
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        if self._writer:
            self._append_line(line)
            return
        with self:  # an occasional writer: lock, append, refresh the CSV, unlock
            self._append_line(line)

    def _append_line(self, line: bytes) -> None:
        created = not self.jsonl.exists()
        fd = os.open(self.jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:  # one write in practice; a short write leaves a torn line that the next open drops
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_directory(self.directory)
        self._dirty = True

    def _remove_temporaries(self) -> None:
        for pattern in TEMPORARY_GLOBS:
            for stale in self.directory.glob(pattern):
                stale.unlink(missing_ok=True)

    def _repair_tail(self) -> None:
        """Drop a torn last line (cut short by a crash) so the next record starts on its own line."""
        if not self.jsonl.exists():
            return
        try:
            handle = self.jsonl.open("rb+")
        except OSError as error:
            raise UserError(f"cannot write the results log ({error.strerror or error})", file=str(self.jsonl)) from None
        with handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0 or _byte_at(handle, size - 1) == b"\n":
                return
            start = _last_line_start(handle, size)
            handle.seek(start)
            tail = handle.read()
            try:
                _Log().apply(json.loads(tail.decode("utf-8")))
                handle.write(b"\n")  # a whole record that only lacks its newline: keep it
            except (ValueError, TypeError, KeyError, AttributeError):
                line = self.jsonl.read_bytes()[:start].count(b"\n") + 1
                self._warn(line, f"a torn trailing record ({size - start} bytes, removed)")
                handle.truncate(start)
            handle.flush()
            os.fsync(handle.fileno())

    def _compact_if_worth_it(self) -> None:
        """Rewrite the log as its current content once superseded rows outnumber live ones, so that
        ``--force`` reruns and re-derived metrics do not grow it without bound. Unreadable lines are
        kept aside in ``results.jsonl.corrupt``, not thrown away."""
        log, skipped = self._replay()
        live = sum(len(r) for r in log.runs.values()) + sum(len(r) for d in log.derived.values() for r in d.values())
        if log.rows_read - live <= live:
            return
        if skipped:
            with open(self.directory / "results.jsonl.corrupt", "ab") as aside:
                aside.writelines(line + b"\n" for _, line in skipped)
        _atomic_write(self.jsonl, "".join(json.dumps(r, sort_keys=True) + "\n" for r in log.records()))


# -- the lock: one per folder per process, held by every open writer of that folder --------------

_HELD: dict[str, list[int]] = {}  # real path -> [fd, writers, pid]


def _acquire(directory: Path) -> None:
    key = os.path.realpath(directory)
    held = _HELD.get(key)
    if held and held[2] == os.getpid():
        held[1] += 1
        return
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise UserError(f"results folder is not writable ({error.strerror or error})", file=str(directory)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"results folder is in use by another writer (pid {holder}); wait for it to finish "
                        "or choose another --out", file=str(directory)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = [fd, 1, os.getpid()]


def _release(directory: Path) -> None:
    key = os.path.realpath(directory)
    held = _HELD.get(key)
    if not held:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[key]
        os.close(held[0])  # closing the last descriptor releases the flock


# -- helpers ---------------------------------------------------------------------------------------


def _encode(rows: list[JsonObject]) -> list[str]:
    return [json.dumps({k: _clean(v) for k, v in r.items()}, sort_keys=True) for r in rows]


def _older(path: Path, than: Path) -> bool:
    try:
        return path.stat().st_mtime_ns <= than.stat().st_mtime_ns  # equal: same coarse tick, assume stale
    except FileNotFoundError:
        return True


def _byte_at(handle: BinaryIO, offset: int) -> bytes:
    handle.seek(offset)
    return handle.read(1)


def _last_line_start(handle: BinaryIO, size: int) -> int:
    """Offset just after the last newline before ``size`` (0 when there is none)."""
    position = size
    while position > 0:
        step = min(65536, position)
        handle.seek(position - step)
        chunk = handle.read(step)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return position - step + newline + 1
        position -= step
    return 0


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    atomic_write(path, text, durable=True)


def _atomic_write_csv(path: Path, rows: list[JsonObject]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "extra": json.dumps(row.get("extra", {}), sort_keys=True)})
    _atomic_write(path, buffer.getvalue())
