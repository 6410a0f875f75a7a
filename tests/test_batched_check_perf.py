"""bench/tools/check_perf.py: reads a pytest-benchmark JSON file and fails when a performance goal is missed."""

from __future__ import annotations

import json

from bench.tools import check_perf


def _bench(name, mean, **extra):
    return {"name": name, "stats": {"mean": mean}, "extra_info": extra}


def _write(tmp_path, benches):
    path = tmp_path / "perf.json"
    path.write_text(json.dumps({"machine_info": {"node": "n", "cpu": {"count": 2}}, "benchmarks": benches}))
    return str(path)


def test_goals_met_exit_zero_and_print_every_figure(tmp_path, capsys):
    path = _write(tmp_path, [
        _bench("test_federated_engine", 4.0), _bench("test_central_loop_same_steps", 4.0, engine_over_central=1.02),
        _bench("test_round_time[lora-sequential]", 10.0), _bench("test_round_time[lora-batched]", 3.0),
        _bench("test_round_time[fft-sequential]", 10.0), _bench("test_round_time[fft-batched]", 2.0,
                                                                 batched_over_sequential=0.2),
        _bench("test_round_time[dp-lora-sequential]", 10.0), _bench("test_round_time[dp-lora-batched]", 3.5)])
    assert check_perf.main([path]) == 0
    out = capsys.readouterr().out
    assert "engine/central" in out and "1.020" in out
    assert "batched/sequential lora" in out and "0.300" in out  # computed from the means
    assert "batched/sequential fft" in out and "0.200" in out  # as recorded
    assert "batched/sequential dp-lora" in out and "0.350" in out  # dp-local's clients trained together


def test_a_missed_goal_exits_one(tmp_path, capsys):
    slow_engine = _write(tmp_path, [_bench("test_federated_engine", 5.0), _bench("test_central_loop_same_steps", 4.0)])
    assert check_perf.main([slow_engine]) == 1
    out = capsys.readouterr().out
    assert "1.250" in out and "MISSED" in out
    slow_batching = _write(tmp_path, [_bench("test_round_time[lora-sequential]", 10.0),
                                      _bench("test_round_time[lora-batched]", 3.6)])
    assert check_perf.main([slow_batching]) == 1
    assert "MISSED" in capsys.readouterr().out
    assert check_perf.main([slow_batching, "--batched-goal", "0.4"]) == 0


def test_no_figures_or_no_file_exit_two(tmp_path):
    assert check_perf.main([_write(tmp_path, [_bench("test_other", 1.0)])]) == 2
    assert check_perf.main([str(tmp_path / "missing.json")]) == 2
    disabled = _write(tmp_path, [{"name": "test_round_time[lora-batched]", "stats": None, "extra_info": {}},
                                 {"name": "test_round_time[lora-sequential]", "stats": None, "extra_info": {}}])
    assert check_perf.main([disabled]) == 2  # --benchmark-disable records no times: nothing to judge
