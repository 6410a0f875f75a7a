"""One run (a scenario at one seed): plan, build, train federated, attack, score, evaluate.

``plan`` decides before anything runs whether the combination is possible (Table 1 availability and
defense compatibility); ``execute`` turns a run into result rows, recording failures instead of
raising them so that a sweep goes on.

Attacks the tier rules out. Every attack declares the ``Access`` it needs (``Attack.access``); an
attack whose needs the tier does not grant is refused by ``plan``, before training, and never runs:
- an attack that changes training (poisoning, Byzantine clients) defines the run, so the whole run
  is ``incompatible`` with the reason (training without it would measure something else);
- an attack that only evaluates the trained model gets one row of its own, ``incompatible`` with
  the reason (``Plan.refused``); the run still trains, and its utility and its other attacks are
  measured and recorded as usual.
``not-applicable`` is kept for what only shows at evaluation (an attack that finds the task's
records are of a kind it does not score).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from bench.api.access import access_refusal, availability
from bench.api.attack import Attack
from bench.api.defense import Defense, DefenseSlot, composition_problem, in_slot_order
from bench.api.errors import IncompatibleError, TierAccessError, UserError
from bench.api.method import Method
from bench.api.predictions import MembershipScores
from bench.api.privacy import PrivacyAccounting
from bench.api.registry import ATTACKS, DEFENSES, METHODS, MODELS, PROTOCOLS, TASKS, TIERS
from bench.api.seeding import derive_seed, generator
from bench.api.transcript import Canary, GroundTruth, Transcript
from bench.api.vocabulary import JsonObject, RunStatus
from bench.client.device import describe, peak_gpu_memory_mb, pick_device, reset_peak_memory
from bench.engine import federation as fl
from bench.engine import learning
from bench.engine.views import ViewBuilder
from bench.scoring import base_perplexity
from bench.scoring.mia import roc_curve
from bench.scoring.roc import compact_roc
from bench.scoring.score import Metric, score
from bench.scoring.utility import evaluate
from bench.spec.scenario import Federation, Scenario
from bench.store.provenance import git_commit, package_versions, peak_rss_mb, scenario_record
from bench.store.results import Row
from bench.world.models import ModelSource
from bench.world.partition import ClientData, deal, split_members
from bench.world.tasks import Task, TaskData, identical_pairs, truncation
from bench.world.tiers import Tier

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from tqdm import tqdm
    from transformers import PreTrainedTokenizerBase


@dataclass
class Plan:
    """The instantiated components of a run, checked for compatibility."""

    tier: Tier
    model_source: ModelSource
    task: Task
    method: Method
    defenses: list[Defense]
    attacks: list[Attack]
    """The attacks that will run (those the tier grants)."""
    refused: list[tuple[str, str]] = field(default_factory=list)
    """(attack, reason) for evaluation-only attacks the tier rules out: recorded, never run."""


def plan(scenario: Scenario) -> Plan:
    """Instantiate components and check them; raises ``IncompatibleError`` with the reason."""
    built = Plan(
        tier=TIERS.get(scenario.tier.name)(scenario.tier.config),
        model_source=MODELS.get(scenario.model.name)(scenario.model.config),
        task=TASKS.get(scenario.task.name)(scenario.task.config),
        method=METHODS.get(scenario.method.name)(scenario.method.config),
        defenses=in_slot_order([DEFENSES.get(d.name)(d.config) for d in scenario.defenses]),
        attacks=[ATTACKS.get(a.name)(a.config) for a in scenario.attacks],
    )
    reason = incompatibility(built, scenario)
    if reason:
        raise IncompatibleError(reason, file=scenario.file)
    refused = {id(a): access_refusal(built.tier, a) or channel_refusal(a, scenario) for a in built.attacks}
    built.refused = [(a.name, refused[id(a)]) for a in built.attacks if refused[id(a)]]
    built.attacks = [a for a in built.attacks if not refused[id(a)]]
    return built


def incompatibility(built: Plan, scenario: Scenario) -> str | None:
    reason = availability(built.tier, built.method) or _engine_refusal(scenario)
    if reason:
        return reason
    if built.task.kind not in built.method.task_kinds:
        return f"{built.method.name} cannot train a {built.task.kind} task (it trains: {', '.join(sorted(built.method.task_kinds))})"
    reason = built.method.check_compatible(built.defenses)
    if reason:
        return reason
    for attack in (a for a in built.attacks if a.changes_training):  # others are skipped at evaluation
        reason = channel_refusal(attack, scenario)
        if reason:
            return reason
        if built.task.kind not in attack.task_kinds:
            return f"{attack.name} applies to {', '.join(sorted(attack.task_kinds))} tasks, not {built.task.kind}"
        reason = access_refusal(built.tier, attack) or _federation_refusal(attack, scenario)
        if reason:
            return reason
    reason = composition_problem([type(d) for d in built.defenses])  # the loader refuses it first; plans built in code
    if reason:
        return reason
    for defense in built.defenses:
        reason = channel_refusal(defense, scenario) or defense.check_compatible(
            [d for d in built.defenses if d is not defense], scenario)
        if reason:
            return reason
    return None


def _engine_refusal(scenario: Scenario) -> str | None:
    """Flower's strategy and ClientApp carry parameter updates: a protocol that sends logits or activations
    (kd, split) would otherwise silently run as FedAvg there."""
    s = scenario.federation
    if s.engine != "inprocess" and not PROTOCOLS.get(s.protocol).shares_parameters:
        return f"federation.engine {s.engine} runs parameter-sharing protocols; protocol {s.protocol} runs in-process only"
    return None


def channel_refusal(component: Attack | Defense | type[Attack], scenario: Scenario) -> str | None:
    """Why an attack or defense (or an attack class) cannot act on the messages of the scenario's protocol
    (its ``channels`` do not hold the protocol's ``channel``), or None; components that touch no message
    run under any."""
    channel = PROTOCOLS.get(scenario.federation.protocol).channel
    if channel in component.channels or not _touches_messages(component):
        return None
    return (f"{component.name} acts on {'/'.join(sorted(component.channels))} messages; protocol "
            f"{scenario.federation.protocol} sends {channel}")


def _touches_messages(component: Attack | Defense | type[Attack]) -> bool:
    if isinstance(component, (type, Attack)):
        attack = component if isinstance(component, type) else type(component)
        reads = bool({"client_updates", "aggregates"} & set(attack.needs)) or attack.vantage == "aggregate"
        return reads or attack.poison_updates is not Attack.poison_updates
    return component.slot is not DefenseSlot.TRAINING


def _federation_refusal(attack: Attack, scenario: Scenario) -> str | None:
    """Why a training attack cannot do what it claims at this federation's size (e.g. ALIE's z_max = 0), or None."""
    return attack.check_federation(scenario.federation)


@dataclass
class RunResult:
    metrics: list[tuple[str, Metric]] = field(default_factory=list)
    extra: JsonObject = field(default_factory=dict)
    status: RunStatus = RunStatus.OK
    error: str = ""
    device: str = "cpu"
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    """(attack, status, reason) for attacks the tier ruled out before training (``incompatible``), or ruled
    out at evaluation time or that failed there."""
    row_extra: dict[tuple[str, str], JsonObject] = field(default_factory=dict)
    """(attack, metric) -> what that one row keeps beside its value (an MIA's ROC points, for the report)."""


def execute(scenario: Scenario, seed: int, *, progress: tqdm | None = None, figures: str | None = None) -> list[Row]:
    """Result rows of one run; failures become rows with ``status`` failed/incompatible."""
    started = time.perf_counter()
    result = RunResult()
    try:
        built = plan(scenario)
        if _drives_a_deployment(scenario):  # the run happens in a SuperLink's ServerApp, which calls execute again
            from bench.engine.flower.deployment import run_scenario

            return _with_outer_wall(run_scenario(scenario, seed), time.perf_counter() - started)
        result = _run(scenario, seed, built, progress, figures)
    except IncompatibleError as error:
        result = RunResult(status=RunStatus.INCOMPATIBLE, error=str(error).split(": ", 1)[-1])
    except UserError as error:  # found only at run time (a secagg abort, a data file gone): this run fails, the sweep goes on
        result = RunResult(status=RunStatus.FAILED, error=str(error)[:500])
    except Exception as error:  # a failing run is recorded and the sweep goes on
        result = RunResult(status=RunStatus.FAILED, error=_one_line(error))
    return _rows(scenario, seed, result, time.perf_counter() - started)


def _with_outer_wall(rows: list[Row], wall_s: float) -> list[Row]:
    """A deployed run's rows come from the ServerApp's own ``execute``, which timed only itself; the run's cost
    is the whole deployment (starting the SuperLink and SuperNodes, every ClientApp process, stopping them).
    ``wall_s`` and the ``cost.wall_s`` metric become that, and the ServerApp's figure stays in the metric
    row's ``extra`` (``server_app_s``)."""
    for row in rows:
        if row.metric == "cost.wall_s" and row.value is not None:
            row.extra = {**row.extra, "server_app_s": row.value}
            row.value = wall_s
        row.wall_s = round(wall_s, 3)
    return rows


def failed_rows(scenario: Scenario, seed: int, reason: str, wall_s: float = 0.0) -> list[Row]:
    """The rows of a run that failed outside ``execute`` (its worker process died): as ``execute`` records a failure."""
    return _rows(scenario, seed, RunResult(status=RunStatus.FAILED, error=reason[:500]), wall_s)


def _one_line(error: BaseException) -> str:
    return traceback.format_exception_only(type(error), error)[-1].strip()[:500]


def _rows(scenario: Scenario, seed: int, result: RunResult, wall_s: float) -> list[Row]:
    base = dict(
        run_id=f"{scenario.hash}-{seed}", scenario=scenario.name, scenario_hash=scenario.hash, seed=seed,
        tier=scenario.tier.name, model=scenario.model.name, task=scenario.task.name, method=scenario.method.name,
        defenses=scenario.defense_label, status=result.status, error=result.error, git_commit=git_commit(),
        packages=package_versions(), device=result.device, wall_s=round(wall_s, 3), peak_mem_mb=round(peak_rss_mb(), 1),
        extra={**result.extra, **_training_identity(scenario)},
    )
    if result.status != RunStatus.OK:
        rows = [Row(attack="none", metric="run", value=None, **base)]
    else:
        metrics = result.metrics + [("none", Metric("cost.wall_s", wall_s, higher_is_better=False))]
        rows = [Row(attack=attack, metric=m.name, value=m.value, ci_low=m.ci_low, ci_high=m.ci_high,
                    higher_is_better=m.higher_is_better, **{**base, "extra": {**base["extra"], **(m.extra or {})}})
                for attack, m in metrics]
    for attack, status, reason in result.skipped:
        rows.append(Row(attack=attack, metric="run", value=None, **{**base, "status": status, "error": reason}))
    extras = {(attack, m.name): m.extra for attack, m in result.metrics if m.extra}
    for row in rows:  # figures read these later; the report never re-runs anything
        row.extra = {**row.extra, **extras.get((row.attack, row.metric), {}),
                     **result.row_extra.get((row.attack, row.metric), {})}
    rows[0].extra = {**rows[0].extra, "scenario_config": scenario_record(scenario), "regime": scenario.regime,
                     "protocol": PROTOCOLS.get(scenario.federation.protocol)(scenario.federation).label()}
    families, roles = _declared(scenario)
    if families:  # reports file attacks by the family and role they declare, even for runs that never ran them
        rows[0].extra["attack_families"] = families
        rows[0].extra["attack_roles"] = roles
    if scenario.defenses:  # reports compare a defense as the family its class declares, never by its name
        rows[0].extra["defense_families"] = {d.name: str(DEFENSES.get(d.name).family) for d in scenario.defenses}
    return rows


def _training_identity(scenario: Scenario) -> JsonObject:
    """What lets a later step pair this run with the run that trained the same model without attackers."""
    identity: JsonObject = {"training_key": scenario.training_key}
    if scenario.training_attacks:
        identity.update(clean_training_key=scenario.clean_training_key,
                        training_attacks=[a.name for a in scenario.training_attacks])
    return identity


@dataclass
class Prepared:
    """A run ready to train: components built, data dealt, the round loop configured."""

    scenario: Scenario
    seed: int
    built: Plan
    task_data: TaskData
    clients: list[ClientData]
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    fed: fl.Federation
    transcript: Transcript
    truth: GroundTruth


def prepare(scenario: Scenario, seed: int, built: Plan, progress: tqdm | None = None) -> Prepared:
    # Randomness is keyed on the seed, not the scenario hash: scenarios that differ only in their
    # defenses or attacks are paired (same data, initialisation, client sampling), so a Table 4 cell
    # compares like with like.
    parts = ("run", seed)
    device = pick_device(scenario.device)
    s = scenario.federation
    task_data = built.task.load(s.clients * s.examples_per_client, generator(*parts, "data"))
    clients = _deal_clients(built.task, task_data.pool, s, generator(*parts, "partition"))
    malicious = _malicious(built.attacks, s.clients, generator(*parts, "malicious"))
    _poison_clients(built.attacks, clients, malicious, parts)
    model, tokenizer = built.model_source.load(built.task.kind, built.task.num_labels, device, derive_seed(*parts, "init"))
    _check_poisoned(built, clients, malicious, tokenizer)
    built.method.task_loss = built.task.example_losses
    built.method.tier = built.tier
    built.method.prepare(model, built.task, generator(*parts, "method"))
    for defense in built.defenses:
        defense.setup(scenario, {c: len(d.members) for c, d in enumerate(clients)},
                      peers=[d for d in built.defenses if d is not defense])
    fed = fl.Federation(
        method=built.method, model=built.method.model, clients=clients,
        collate=lambda examples: built.task.collate(examples, tokenizer, device), settings=s, seed_parts=parts,
        defenses=built.defenses, attackers=[a for a in built.attacks if a.changes_training], malicious=tuple(malicious),
        keep=_kept_parts(built), progress=progress, public=list(task_data.auxiliary),
        protocol=PROTOCOLS.get(s.protocol)(s),  # built here, not in the loop: every engine's run reports its costs
    )
    _give_server_updates(built.defenses, fed, task_data.auxiliary)
    _give_generation(built.defenses, built, tokenizer)
    truth = GroundTruth(malicious_clients=tuple(malicious), canaries=task_data.canaries,
                        canary_copies=_canary_copies(task_data.canaries, clients))
    transcript = Transcript()
    fed.trainer = built.method.trainer(fed.trainer, transcript)
    return Prepared(scenario, seed, built, task_data, clients, tokenizer, device, fed, transcript, truth)


def _run(scenario: Scenario, seed: int, built: Plan, progress: tqdm | None, figures: str | None = None) -> RunResult:
    p = prepare(scenario, seed, built, progress)
    truncated = _truncation_metric(p)  # before training: a task that cuts every response token is an error
    fit = base_perplexity.measure(built.model_source, built.task,
                                  _eval_set(p.task_data.test, scenario.federation.eval_examples), p.device)
    from bench.world.tiers import OpenModel

    own_view = OpenModel(built.method.model, built.method.layout(), built.task, p.tokenizer)
    eval_set = _eval_set(p.task_data.test, scenario.federation.eval_examples)
    # with the method: evaluate() adds the method's own utility (RLHF: reward accuracy, DPO margin)
    measure = lambda: evaluate(own_view, built.task, eval_set, built.method)  # noqa: E731
    base, curve = learning.base_metrics(measure), None  # before any training: the figure a trained one is set beside
    if scenario.federation.utility_curve:
        curve = learning.LearningCurve(measure, built.method.set_flat, base=base)
        p.fed.observers.append(curve)
    reset_peak_memory(p.device)
    stats = _federate(p)
    if "client_batches" in p.fed.keep:  # the inversion scorer's floor: records no client trained on
        p.truth.held_out = held_out_tokens(built.task, p.task_data.test, p.tokenizer, p.device)
    result = RunResult(device=describe(p.device), skipped=[(name, RunStatus.INCOMPATIBLE, why) for name, why in built.refused])
    result.metrics.append(("none", truncated))
    _identical_pairs_metric(p, result)
    if fit is not None:
        result.metrics.append(("none", fit[0]))
        result.row_extra[("none", fit[0].name)] = fit[1]
        if "warning" in fit[1]:  # every row of the run carries it, not only the perplexity row
            result.extra["base_model_warning"] = fit[1]["warning"]
    _stage(progress, "evaluating utility", total=1 + len(built.attacks))  # after training, time goes here
    result.metrics += [("none", m) for m in measure() + base + (curve.metrics() if curve else [])]
    views = ViewBuilder(scenario, seed, built, p.transcript, p.tokenizer, p.clients, p.task_data, p.truth,
                        max_candidates=scenario.federation.mia_candidates or None)
    curves: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for attack in built.attacks:
        if built.task.kind not in attack.task_kinds:
            kinds = ", ".join(sorted(attack.task_kinds))
            result.skipped.append((attack.name, RunStatus.NOT_APPLICABLE, f"{attack.name} applies to {kinds} tasks"))
            continue
        _stage(progress, f"attack {attack.name}")
        try:
            prediction = attack.run(views.for_attack(attack), generator("run", seed, "attack", attack.name))
        except (TierAccessError, IncompatibleError) as error:  # the tier or task rules this attack out
            result.skipped.append((attack.name, RunStatus.NOT_APPLICABLE, str(error).split(": ", 1)[-1]))
            continue
        except Exception as error:  # one broken attack must not discard the run's other measurements
            result.skipped.append((attack.name, RunStatus.FAILED, _one_line(error)))
            continue
        metrics = score(prediction, views.truth)
        result.metrics += [(attack.name, m) for m in metrics]
        _keep_metric_extras(result, attack, metrics)
        if isinstance(prediction, MembershipScores) and any(m.name == "mia.auc" for m in metrics):
            roc = roc_curve(prediction.scores, views.truth.member_flags)[:2]
            result.row_extra[(attack.name, "mia.auc")] = {"roc": compact_roc(roc[0].tolist(), roc[1].tolist())}
            if figures:
                curves[attack.name] = roc
    result.metrics += [("none", m) for m in _cost_metrics(stats, scenario.federation.rounds, [*built.defenses, p.fed.protocol], p.device)]
    result.metrics += [("none", m) for m in _privacy_metrics(built.defenses, p.transcript, result.extra)]
    result.metrics += [("none", m) for m in _pii_egress(p.transcript, p.clients, built.task)]
    if curves:
        result.extra["roc_figure"] = _save_roc(curves, figures, f"{scenario.hash}-{seed}")
    result.extra.update({"trainable_params": built.method.num_trainable, "malicious": list(p.fed.malicious),
                         "model": built.model_source.metadata(), "train_batching": stats.batching.record()})
    return result


def _federate(p: Prepared) -> fl.FederationStats:
    """The rounds, by the engine the scenario names; Flower is imported only when asked for (an optional extra)."""
    if p.scenario.federation.engine != "inprocess":  # flower, or the ServerApp of flower-deployment (its Grid)
        from bench.engine.flower.simulation import run_rounds

        return run_rounds(p)
    return fl.run(p.fed, p.transcript, p.truth)


def _drives_a_deployment(scenario: Scenario) -> bool:
    """flower-deployment, in the process that must start the SuperLink (not in the ServerApp it runs)."""
    if scenario.federation.engine != "flower-deployment":
        return False
    from bench.engine.flower import GRIDS

    return not GRIDS


HELD_OUT_RECORDS = 64
"""Test records tokenized for the inversion floor (enough for a stable mean, cheap to score)."""


def held_out_tokens(task: Task, records: list[dict], tokenizer: PreTrainedTokenizerBase, device: torch.device) -> list[list[int]]:
    """Token ids of up to ``HELD_OUT_RECORDS`` records as a client batch would hold them (``fl._token_ids``)."""
    if not records:
        return []
    batch = task.collate(records[:HELD_OUT_RECORDS], tokenizer, device)
    ids, mask = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool()
    return [row[m].tolist() for row, m in zip(ids, mask)]


def _stage(progress: tqdm | None, text: str, total: int | None = None) -> None:
    """Show what a run is doing in its progress bar (one step per stage after the rounds)."""
    if progress is None or not hasattr(progress, "set_description_str"):
        return
    if total is not None:
        progress.reset(total=total)
    else:
        progress.update(1)
    progress.set_description_str(text)


def _truncation_metric(p: Prepared) -> Metric:
    """``data.truncated_fraction`` over every record the run trains, attacks or evaluates on."""
    data = p.task_data
    records = data.pool + data.auxiliary + _eval_set(data.test, p.scenario.federation.eval_examples)
    return Metric("data.truncated_fraction", truncation(p.built.task, records, p.tokenizer), higher_is_better=False)


def _identical_pairs_metric(p: Prepared, result: RunResult) -> None:
    """Preference tasks: ``data.identical_pairs`` (pairs truncation made identical), and a warning that
    every row of the run carries when there are any (they train nothing: issue 15's zero updates)."""
    data = p.task_data
    found = identical_pairs(p.built.task, data.pool + _eval_set(data.test, p.scenario.federation.eval_examples), p.tokenizer)
    if found is None:
        return
    result.metrics.append(("none", Metric("data.identical_pairs", found[0], higher_is_better=False)))
    if found[1]:
        result.extra["data_warning"] = found[1]


def _give_server_updates(defenses: list[Defense], fed: fl.Federation, public: list[dict]) -> None:
    """FLTrust-style rules train a server update on a small public root set each round."""
    for defense in defenses:
        if defense.needs_server_update:
            root = public[: defense.config.root_size]
            defense.server_update_fn = lambda r, root=root: fl.server_update(fed, r, root)


def _give_generation(defenses: list[Defense], built: Plan, tokenizer: PreTrainedTokenizerBase) -> None:
    """Defenses that rewrite a client's data with the model itself (``constitutional``) generate with the
    in-process model, which holds the client's current state when its local training starts."""
    from bench.world.tiers import OpenModel

    for defense in defenses:
        if defense.needs_generation:
            defense.generate_fn = OpenModel(built.method.model, None, built.task, tokenizer).generate


def _save_roc(curves: dict[str, tuple[torch.Tensor, torch.Tensor]], directory: str, stem: str) -> str:
    """A log-log ROC figure of every membership attack of the run (``run --figures DIR``)."""
    from pathlib import Path

    from bench.scoring.mia import plot_roc

    Path(directory).mkdir(parents=True, exist_ok=True)
    path = str(Path(directory) / f"roc-{stem}.png")
    plot_roc(curves, path)
    return path


def _deal_clients(task: Task, pool: list[dict], s: Federation, rng: torch.Generator) -> list[ClientData]:
    labels = [task.label_of(e) for e in pool]
    shares = deal(len(pool), s.clients, s.partition, s.alpha, labels, rng)
    return [split_members([pool[i] for i in share], s.member_fraction, rng) for share in shares]


def _malicious(attacks: list[Attack], clients: int, rng: torch.Generator) -> list[int]:
    fraction = max([a.malicious_fraction() for a in attacks if a.changes_training], default=0.0)
    count = int(round(fraction * clients))
    return sorted(torch.randperm(clients, generator=rng)[:count].tolist())


def _poison_clients(attacks: list[Attack], clients: list[ClientData], malicious: list[int], parts: tuple) -> None:
    for attack in (a for a in attacks if a.changes_training):
        for c in malicious:
            clients[c].members = attack.poison_examples(c, clients[c].members, generator(*parts, "poison-data", c))


def _check_poisoned(built: Plan, clients: list[ClientData], malicious: list[int], tokenizer: PreTrainedTokenizerBase) -> None:
    """A poisoned record that ``max_length`` cuts (a backdoor target cut off) would measure nothing: each
    training attack may refuse its own records (``check_poisoned`` raises ``UserError``)."""
    for attack in (a for a in built.attacks if a.changes_training):
        attack.check_poisoned(built.task, tokenizer, [e for c in malicious for e in clients[c].members])


def _kept_parts(built: Plan) -> frozenset[str]:
    keep = set().union(*(a.needs for a in built.attacks)) if built.attacks else set()
    keep |= {"aggregates"} if any(a.vantage == "aggregate" for a in built.attacks) else set()
    if "client_updates" in keep or "aggregates" in keep:
        keep.add("client_batches")
    return frozenset(keep)


def _eval_set(test: list[dict], limit: int) -> list[dict]:
    return test[:limit] if limit else test


def _cost_metrics(stats: fl.FederationStats, rounds: int, defenses: list[Defense], device: torch.device) -> list[Metric]:
    metrics = [
        Metric("cost.client_s", stats.client_s / rounds, higher_is_better=False),
        Metric("cost.server_s", stats.server_s / rounds, higher_is_better=False),
        Metric("cost.bytes_up", stats.bytes_up / rounds, higher_is_better=False),
        Metric("cost.bytes_down", stats.bytes_down / rounds, higher_is_better=False),
        Metric("cost.expansion", stats.bytes_up / max(stats.plain_bytes_up, 1), higher_is_better=False),
        Metric("cost.peak_mem_mb", peak_rss_mb(), higher_is_better=False),
    ]
    gpu = peak_gpu_memory_mb(device)
    if gpu is not None:
        metrics.append(Metric("cost.peak_gpu_mem_mb", gpu, higher_is_better=False))
    for defense in defenses:
        metrics += [Metric(name, float(value), higher_is_better=False) for name, value in defense.costs().items()]
    return metrics


def _privacy_metrics(defenses: list[Defense], transcript: Transcript, extra: JsonObject) -> list[Metric]:
    metrics = [
        Metric("privacy.egress_records", float(transcript.egress_records), higher_is_better=False),
        Metric("privacy.egress_bytes", float(transcript.egress_bytes), higher_is_better=False),
    ]
    reports = [(d.name, PrivacyAccounting.of(d.privacy())) for d in defenses]
    counts: dict[str, int] = {}
    for _, report in reports:
        for key in report:
            counts[key] = counts.get(key, 0) + 1
    for name, report in reports:
        for key, value in report.items():
            label = key if counts[key] == 1 else f"{key}[{name}]"  # two DP layers: keep both, apart
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.append(Metric(label, float(value), higher_is_better=PrivacyAccounting.higher_is_better(key)))
            else:
                extra[label] = value
    return metrics


def _keep_metric_extras(result: RunResult, attack: Attack, metrics: list[Metric]) -> None:
    """A metric's ``extra`` (its ``floor``) and the attack's declared family and Table 4 role go beside its row."""
    declared = {"family": str(attack.family), "role": str(attack.table_role())}
    for m in metrics:
        kept = {**(m.extra or {}), **declared}
        result.row_extra[(attack.name, m.name)] = {**result.row_extra.get((attack.name, m.name), {}), **kept}


def _declared(scenario: Scenario) -> tuple[dict[str, str], dict[str, str]]:
    """(attack -> family, attack -> Table 4 role) for the scenario's attacks, as declared by their classes.

    An attack that cannot read the protocol's channel (``channel_refusal``) gets no role: it has no Table 4
    cell on this protocol's row. A grid that lists split learning's activation inversion beside KD's logit
    attack runs both on every row; the kd row's inversion cell is not a gap of KD (no attack on logits was
    left out), so it must not read "not applicable". A tier that refuses an attack keeps its role: that
    refusal is a finding of the tier."""
    classes = {spec.name: ATTACKS.get(spec.name) for spec in scenario.attacks}
    return ({name: str(cls.family) for name, cls in classes.items()},
            {name: str(cls.table_role()) for name, cls in classes.items() if not channel_refusal(cls, scenario)})


def _canary_copies(canaries: list[Canary], clients: list[ClientData]) -> list[int]:
    """Per canary, its copies among the clients' members (a copy dealt to held-out data is not trained)."""
    if not canaries:
        return []
    counts = [0] * len(canaries)
    for client in clients:
        for example in client.members:
            if isinstance(example.get("canary"), int) and 0 <= example["canary"] < len(counts):
                counts[example["canary"]] += 1
    return counts


def _pii_egress(transcript: Transcript, clients: list[ClientData], task: Task) -> list[Metric]:
    """PII in what left the clients for the provider (closed tiers): distinct items in client requests,
    and the fraction of the members' items among them (``bench.api.pii`` rules)."""
    sent = [r.text for r in transcript.provider_log if r.client is not None]
    if not sent:
        return []
    from bench.api import pii

    logged = set().union(*(pii.values(t) for t in sent))
    owned = set().union(set(), *(pii.values(task.text_of(e)) for c in clients for e in c.members))
    metrics = [Metric("privacy.egress_pii_items", float(len(logged)), higher_is_better=False)]
    if owned:
        metrics.append(Metric("privacy.egress_pii_fraction", len(owned & logged) / len(owned), higher_is_better=False))
    return metrics
