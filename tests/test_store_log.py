"""The results log: O(1) appends, later records win, torn and corrupt lines skipped with a warning."""

from __future__ import annotations

import json
import os

import pytest

import bench.store.results as results
from bench.store.results import ResultStore, Row


def _run(seed: int, *, value: float = 0.5, status: str = "ok", metrics: int = 2, name: str = "h") -> list[Row]:
    return [Row(run_id=f"{name}-{seed}", scenario="s", scenario_hash=name, seed=seed, tier="open-weight", model="m",
                task="t", method="lora", defenses="none", attack="none", metric=f"utility.m{j}", value=value,
                status=status) for j in range(metrics)]


def _store(tmp_path, seeds=range(3)) -> ResultStore:
    store = ResultStore(tmp_path)
    for seed in seeds:
        store.append(_run(seed), replace=("h", seed))
    return store


def test_append_neither_reads_the_log_nor_rewrites_the_csv(tmp_path, monkeypatch):
    store = ResultStore(tmp_path, writer=True)
    store.append(_run(0))
    store.close()
    csv_before = store.csv.stat().st_mtime_ns
    store.open()

    def refuse(*args, **kwargs):
        raise AssertionError("an append must not replay the log")

    monkeypatch.setattr(ResultStore, "_replay", refuse)
    monkeypatch.setattr(results, "_atomic_write", refuse)
    for seed in range(1, 50):
        store.append(_run(seed), replace=("h", seed))
    assert store.csv.stat().st_mtime_ns == csv_before
    assert len(store.jsonl.read_text().splitlines()) == 50, "one line per run"
    monkeypatch.undo()
    store.close()
    assert len(store.csv.read_text().splitlines()) == 1 + 50 * 2, "close derives the CSV from the log"


def test_later_records_supersede_earlier_ones_and_done_skips_failed_runs(tmp_path):
    store = _store(tmp_path)
    store.append(_run(1, value=0.9), replace=("h", 1))  # a --force rerun
    store.append(_run(3, status="failed", metrics=1), replace=("h", 3))
    store.append(_run(4, status="incompatible", metrics=1), replace=("h", 4))
    rows = store.rows()
    assert [(r["seed"], r["value"]) for r in rows if r["metric"] == "utility.m0"] == [
        (0, 0.5), (2, 0.5), (1, 0.9), (3, 0.5), (4, 0.5)]
    assert store.done() == {("h", 0), ("h", 1), ("h", 2), ("h", 4)}, "a failed run is not done: it is retried"
    store.append(_run(3), replace=("h", 3))
    assert ("h", 3) in store.done() and sum(r["seed"] == 3 for r in store.rows()) == 2


def test_replace_metric_swaps_the_derived_rows_and_a_rerun_drops_its_own(tmp_path):
    store = _store(tmp_path)
    derived = [{**r, "metric": "poison.utility_drop", "value": 0.1} for r in store.rows() if r["metric"] == "utility.m0"]
    store.replace_metric("poison.utility_drop", derived)
    lines = len(store.jsonl.read_text().splitlines())
    store.replace_metric("poison.utility_drop", derived)
    assert len(store.jsonl.read_text().splitlines()) == lines, "unchanged derived rows append nothing"
    store.replace_metric("poison.utility_drop", derived[:1])
    assert [r["seed"] for r in store.rows() if r["metric"] == "poison.utility_drop"] == [0]
    store.append(_run(0, value=0.7), replace=("h", 0))
    assert not [r for r in store.rows() if r["metric"] == "poison.utility_drop"], "derived from a superseded run"


def test_torn_trailing_record_is_skipped_with_a_warning_and_its_run_redone(tmp_path, capsys):
    store = _store(tmp_path)
    whole = json.dumps({"record": "runs", "keys": [["h", 3]], "rows": [json.loads(json.dumps(r.__dict__))
                                                                       for r in _run(3)]})
    with store.jsonl.open("a") as handle:
        handle.write(whole[: len(whole) // 2])  # the write a crash cut short
    reader = ResultStore(tmp_path)
    assert reader.done() == {("h", 0), ("h", 1), ("h", 2)}
    assert len(reader.rows()) == 6
    err = capsys.readouterr().err
    assert f"{store.jsonl}:4" in err and "torn" in err and "Traceback" not in err
    assert err.count("warning") == 1, "warned once per store, not once per read"

    writer = ResultStore(tmp_path, writer=True)  # the resumed sweep: drops the torn bytes, redoes run 3
    assert "torn" in capsys.readouterr().err
    writer.append(_run(3), replace=("h", 3))
    writer.close()
    assert ResultStore(tmp_path).done() == {("h", s) for s in range(4)}
    assert all(json.loads(line) for line in store.jsonl.read_text().splitlines())
    assert "warning" not in capsys.readouterr().err


def test_whole_trailing_record_without_its_newline_is_kept(tmp_path):
    store = _store(tmp_path)
    store.jsonl.write_bytes(store.jsonl.read_bytes().rstrip(b"\n"))
    with ResultStore(tmp_path, writer=True) as writer:
        assert writer.done() == {("h", s) for s in range(3)}
        writer.append(_run(3))
    assert ResultStore(tmp_path).done() == {("h", s) for s in range(4)}


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00 bytes", b"[1, 2]", b'{"record": "runs", "rows": 5}',
                                     b'{"record": "runs", "rows": [{"metric": "x"}]}', b'"a string"',
                                     b'{"record": "metric", "metric": "utility.m0", "rows": '
                                     b'[{"metric": "x", "scenario_hash": "h", "seed": "not a seed"}]}'])
def test_corrupt_middle_line_is_skipped_with_a_warning_naming_the_line(tmp_path, capsys, garbage):
    store = _store(tmp_path)
    lines = store.jsonl.read_bytes().split(b"\n")
    lines[1] = garbage
    store.jsonl.write_bytes(b"\n".join(lines))
    assert ResultStore(tmp_path).done() == {("h", 0), ("h", 2)}
    err = capsys.readouterr().err
    assert f"{store.jsonl}:2" in err and "corrupt" in err and "Traceback" not in err
    from bench.reporting.report import load_rows

    assert len(load_rows(tmp_path)) == 4


def test_first_format_still_reads_and_takes_appends(tmp_path):
    old = [json.dumps({**r.__dict__, "value": "nan" if r.seed == 1 else r.value}) for s in range(2) for r in _run(s)]
    (tmp_path / "results.jsonl").write_text("\n".join(old) + "\n")
    store = ResultStore(tmp_path)
    assert store.done() == {("h", 0), ("h", 1)}
    store.append(_run(1, value=0.9), replace=("h", 1))
    store.replace_metric("utility.m1", [])  # a derived metric found among old rows is swapped too
    assert sorted((r["seed"], r["metric"], r["value"]) for r in store.rows()) == [
        (0, "utility.m0", 0.5), (1, "utility.m0", 0.9)]


def test_rerun_logs_compact_and_keep_unreadable_lines_aside(tmp_path, capsys):
    store = _store(tmp_path, seeds=range(2))
    with store.jsonl.open("a") as handle:
        handle.write("{corrupt\n")
    with ResultStore(tmp_path, writer=True) as writer:
        for _ in range(3):
            writer.append(_run(0, value=0.7), replace=("h", 0))  # --force reruns
    lines = store.jsonl.read_text().splitlines()
    assert len(lines) == 2, "superseded records outnumbered live ones: the log was rewritten"
    assert sorted((r["seed"], r["value"]) for r in store.rows()) == [(0, 0.7), (0, 0.7), (1, 0.5), (1, 0.5)]
    assert (tmp_path / "results.jsonl.corrupt").read_text() == "{corrupt\n"
    capsys.readouterr()


def test_stale_temporaries_are_removed_on_open_and_a_stale_csv_rewritten(tmp_path):
    store = _store(tmp_path)
    for name in (".results.jsonl-abc123", ".results.csv-def456"):
        (tmp_path / name).write_text("half")
    with store.jsonl.open("a") as handle:  # a SIGKILL after the append, before the CSV
        handle.write(json.dumps({"record": "runs", "keys": [], "rows": [json.loads(json.dumps(r.__dict__))
                                                                          for r in _run(5)]}) + "\n")
    os.utime(store.csv, ns=(0, 0))
    ResultStore(tmp_path, writer=True).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".results.lock", "results.csv", "results.jsonl"]
    assert len(store.csv.read_text().splitlines()) == 1 + 4 * 2
