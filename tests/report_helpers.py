"""Synthetic result rows for the report tests: small, hand-set, no training."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bench.api.registry import ATTACKS, DEFENSES
from bench.store.results import Row


def declared(attacks: list[str]) -> dict[str, dict[str, str]]:
    """What the runner stores in a run's first row for its attacks: each one's declared family and role."""
    classes = {a: ATTACKS.get(a) for a in attacks if a in ATTACKS}  # a test's made-up attack declares its own
    return {"attack_families": {a: str(c.family) for a, c in classes.items()},
            "attack_roles": {a: str(c.table_role()) for a, c in classes.items()}}


def _attacks_of(scenario: str) -> list[str]:
    """The attacks of a synthetic grid cell's name (``t4[...,attacks=a+b]``): the helpers name runs so."""
    label = scenario.split("attacks=", 1)[1].split(",", 1)[0].rstrip("]") if "attacks=" in scenario else ""
    return [a for a in label.split("+") if a and a != "none"]


def run_rows(scenario: str, seed: int, *, method: str = "lora", defenses: str = "none", tier: str = "open-weight",
             metrics: dict[tuple[str, str], float] | None = None, status: str = "ok", error: str = "",
             wall_s: float = 1.0, extras: dict[tuple[str, str], dict[str, Any]] | None = None
             ) -> list[dict[str, Any]]:
    """Tidy rows of one run; ``metrics`` maps (attack, metric) -> value (attack ``none`` for utility/cost),
    ``extras`` (attack, metric) -> that row's ``extra`` (e.g. stored ROC points). The first row carries
    what the runner stores there: the scenario's attacks (``scenario_config``) with their declared
    family and role, each attack's metric row its own."""
    attacks = _attacks_of(scenario) + sorted({a for a, _ in metrics or {} if a != "none"} - set(_attacks_of(scenario)))
    first = {"scenario_config": {"attacks": [{"name": a} for a in attacks]}, **declared(attacks)} if attacks else {}
    named = [d for d in defenses.split("+") if d in DEFENSES]
    if named:  # as the runner stores it: each defense's declared family (a made-up defense's test sets its own)
        first = {**first, "defense_families": {d: str(DEFENSES.get(d).family) for d in named}}
    base = dict(run_id=f"{scenario}-{seed}", scenario=scenario, scenario_hash=f"h-{scenario}", seed=seed, tier=tier,
                model="tiny-gpt2", task="synthetic-clinical", method=method, defenses=defenses, status=status,
                error=error, wall_s=wall_s)
    if status != "ok":
        return [asdict(Row(attack="none", metric="run", value=None, extra=first, **base))]
    metrics = {("none", "cost.wall_s"): wall_s, ("none", "cost.client_s"): 0.5 * wall_s,
               ("none", "cost.server_s"): 0.1 * wall_s, **(metrics or {})}
    extras = extras or {}
    own = declared(attacks)
    rows = [asdict(Row(attack=attack, metric=metric, value=value, **base, extra={
        **extras.get((attack, metric), {}),
        **({"family": own["attack_families"][attack], "role": own["attack_roles"][attack]}
           if attack in own["attack_families"] else {})}))
        for (attack, metric), value in metrics.items()]
    rows[0]["extra"] = {**rows[0]["extra"], **first}
    return rows


def roc_points(auc: float, n: int = 40) -> dict[str, Any]:
    """``extra`` of a ``mia.auc`` row: a ROC curve (fpr^k, k chosen so that its area is ``auc``)."""
    k = (1 - auc) / auc  # area under t = f**k is 1 / (k + 1)
    fpr = [i / (n - 1) for i in range(n)]
    return {"roc": {"fpr": fpr, "tpr": [f**k for f in fpr]}}


def privacy_run(method: str, defenses: str, seed: int, auc: float, rouge: float, accuracy: float,
                wall_s: float = 1.0, epsilon: float | None = None) -> list[dict[str, Any]]:
    name = f"t4[method={method},defenses={defenses},attacks=mia-reference+inversion-dager]"
    metrics = {("none", "utility.accuracy"): accuracy, ("mia-reference", "mia.auc"): auc,
               ("mia-loss", "mia.auc"): auc - 0.05, ("inversion-dager", "inversion.rouge1"): rouge,
               ("inversion-dager", "inversion.recovered"): rouge,
               ("none", "cost.bytes_up"): 1000.0}
    if epsilon is not None:
        metrics[("none", "dp.epsilon")] = epsilon
    extras = {("mia-reference", "mia.auc"): roc_points(auc), ("mia-loss", "mia.auc"): roc_points(auc - 0.05)}
    return run_rows(name, seed, method=method, defenses=defenses, metrics=metrics, wall_s=wall_s, extras=extras)


def poison_run(method: str, defenses: str, seed: int, attack: str, asr: float, accuracy: float) -> list[dict[str, Any]]:
    name = f"t4[method={method},defenses={defenses},attacks={attack}]"
    metrics = {("none", "utility.accuracy"): accuracy, (attack, "poison.asr"): asr}
    return run_rows(name, seed, method=method, defenses=defenses, metrics=metrics)


def synthetic_grid() -> list[dict[str, Any]]:
    """A small Table 4 grid with known verdicts (see tests/test_table4.py for what each cell must say)."""
    rows: list[dict[str, Any]] = []
    for seed, jitter in enumerate((0.0, 0.01, -0.01)):
        rows += privacy_run("lora", "none", seed, auc=0.80 + jitter, rouge=0.6, accuracy=0.9)
        rows += privacy_run("lora", "dp-local", seed, auc=0.52 + jitter, rouge=0.4, accuracy=0.8, wall_s=3.0,
                            epsilon=8.0)
        rows += privacy_run("lora", "secagg", seed, auc=0.80 + jitter, rouge=0.0, accuracy=0.9, wall_s=2.0)
        rows += poison_run("lora", "none", seed, "poison-replacement", asr=0.95, accuracy=0.85)
        rows += poison_run("lora", "robust-median", seed, "poison-replacement", asr=0.60 + jitter, accuracy=0.85)
        rows += run_rows("t4[method=lora,defenses=secagg,attacks=byz-ipm]", seed, defenses="secagg",
                         status="incompatible", error="robust needs updates")
        rows += privacy_run("lora", "robust-krum", seed, auc=0.80 + jitter, rouge=0.6, accuracy=0.9)
        rows += poison_run("lora", "none", seed, "byz-ipm", asr=0.5, accuracy=0.5)
        for defenses in ("none", "robust-krum"):   # an attack that does not apply to the task at all
            rows += run_rows(f"t4[method=rlhf,defenses={defenses},attacks=byz-ipm]", seed, method="rlhf",
                             defenses=defenses, status="incompatible", error="byz-ipm applies to classification tasks")
    return rows
