"""poison.utility_drop: the attacked run against its attacker-free twin at the same seed."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import yaml

from bench.engine.sweep import sweep
from bench.spec.scenario import load
from bench.store.derived import UTILITY_DROP, utility_drop_rows
from bench.store.results import ResultStore, Row


def _run(name: str, seed: int, metrics: dict[str, float], *, key: str, attacks: tuple[str, ...] = (),
         clean_key: str = "", status: str = "ok") -> list[dict]:
    extra = {"training_key": key}
    if attacks:
        extra.update(training_attacks=list(attacks), clean_training_key=clean_key)
    base = dict(run_id=f"{name}-{seed}", scenario=name, scenario_hash=f"h-{name}", seed=seed, tier="open-weight",
                model="tiny-gpt2", task="synthetic-clinical", method="fft", defenses="none", status=status,
                extra=extra)
    rows = [asdict(Row(attack="none", metric=m, value=v, **base)) for m, v in metrics.items()]
    rows += [asdict(Row(attack=a, metric="poison.asr", value=0.9, **base)) for a in attacks]
    return rows


def test_drop_is_twin_minus_attacked_for_accuracy_and_the_rise_for_perplexity():
    rows = (_run("clean", 0, {"utility.accuracy": 0.9}, key="K0")
            + _run("attacked", 0, {"utility.accuracy": 0.6}, key="K1", attacks=("poison-backdoor",), clean_key="K0")
            + _run("lm-clean", 0, {"utility.perplexity": 10.0}, key="L0")
            + _run("lm-attacked", 0, {"utility.perplexity": 14.0}, key="L1", attacks=("poison-harmful",),
                   clean_key="L0"))
    drops = {r["scenario"]: r for r in utility_drop_rows(rows)}
    assert set(drops) == {"attacked", "lm-attacked"}
    assert drops["attacked"]["value"] == pytest.approx(0.3) and drops["attacked"]["attack"] == "poison-backdoor"
    assert drops["attacked"]["extra"]["utility_metric"] == "utility.accuracy"
    assert drops["attacked"]["extra"]["clean_run"] == "clean-0"
    assert drops["lm-attacked"]["value"] == pytest.approx(4.0)


def test_no_drop_without_an_ok_twin_at_the_same_seed():
    attacked = _run("attacked", 1, {"utility.accuracy": 0.6}, key="K1", attacks=("byz-ipm",), clean_key="K0")
    other_seed = _run("clean", 0, {"utility.accuracy": 0.9}, key="K0")
    failed_twin = _run("clean", 1, {}, key="K0", status="failed")
    assert utility_drop_rows(attacked + other_seed + failed_twin) == []


def test_twin_with_other_observing_attacks_still_counts():
    # An attacker-free run that also ran membership attacks trained the same model: same training key.
    scenarios = _poison_scenarios()
    attacked = next(s for s in scenarios if "fraction=0.5" in s.name)
    observer = attacked.without_attacks()
    assert attacked.clean_training_key == observer.training_key != attacked.training_key


def _poison_scenarios(tmp_path=None):
    from pathlib import Path

    document = {
        "name": "drop", "tier": "open-weight", "model": "tiny-gpt2", "method": "lora",
        "task": {"name": "synthetic-clinical", "params": {"num_classes": 3, "max_length": 24}},
        "federation": {"clients": 4, "clients_per_round": 4, "rounds": 1, "local_steps": 2, "batch_size": 4,
                       "lr": 0.01, "examples_per_client": 8, "eval_examples": 24},
        "matrix": {"attacks": [[{"name": "poison-backdoor", "params": {"fraction": 0.0, "boost": 4.0}}],
                               [{"name": "poison-backdoor", "params": {"fraction": 0.5, "boost": 4.0}}]]},
    }
    directory = Path(tmp_path or __import__("tempfile").mkdtemp())
    path = directory / "drop.yaml"
    path.write_text(yaml.safe_dump(document))
    return load(path)


def test_sweep_runs_the_missing_twin_once_and_the_fraction_zero_drop_is_exactly_zero(tmp_path, monkeypatch):
    import bench.engine.sweep as sweep_module

    executed = []
    real = sweep_module.execute
    monkeypatch.setattr(sweep_module, "execute", lambda s, seed, **kw: executed.append(s.name) or real(s, seed, **kw))
    scenarios = _poison_scenarios(tmp_path)
    out = tmp_path / "out"
    sweep(scenarios, out, show_progress=False)
    assert len(executed) == 3 and executed[0].endswith("~no-attackers")
    drops = {r["scenario"]: r["value"] for r in ResultStore(out).rows() if r["metric"] == UTILITY_DROP}
    assert set(drops) == {s.name for s in scenarios}
    zero = next(name for name in drops if "fraction=0.0" in name)
    assert drops[zero] == 0.0  # no malicious client: the same training as the twin, bit for bit
    size = (out / "results.jsonl").stat().st_size
    sweep(scenarios, out, show_progress=False)  # resumes: nothing runs, the derived rows are not duplicated
    assert len(executed) == 3
    assert sum(r["metric"] == UTILITY_DROP for r in ResultStore(out).rows()) == 2
    assert (out / "results.jsonl").stat().st_size == size, "unchanged derived rows are not appended again"
