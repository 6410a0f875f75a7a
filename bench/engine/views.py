"""Threat views: what each vantage may see of a run, built from the transcript, never the truth.

The builder also draws the membership candidates (members and non-members at random from the same
distribution, equal in number), keeps the matching ground truth for the scorer, and offers shadow
training (central fine-tunes with the run's method and hyperparameters, or the run's federation replayed on
the shadow's records) cached per process and memoised on disk.

A view never refers back to the builder: the base model's lazy loader (``BaseModelLoader``) and
shadow training (``ShadowTrainer``) are small objects built from the model source, the task, the
method's name and settings and the run's seed, with no transcript and no ground truth.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from bench.api.registry import METHODS
from bench.api.seeding import derive_seed, generator
from bench.api.transcript import GroundTruth, RoundRecord, ThreatView, Transcript
from bench.api.vocabulary import Vantage
from bench.client.training import LocalJob, train_local
from bench.engine import federation as fl
from bench.engine import shadow_memo
from bench.spec.scenario import MEASUREMENT_NEUTRAL
from bench.world.models import ModelSource
from bench.world.partition import ClientData
from bench.world.tasks import Task, TaskData
from bench.world.tiers import OpenModel, ProviderAPI

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase  # the runner imports this module; its Plan is only named here

    from bench.api.attack import Attack
    from bench.api.method import Method
    from bench.engine.runner import Plan
    from bench.spec.scenario import Federation, Scenario

ROUND_FIELDS: dict[Vantage, tuple[str, ...]] = {
    Vantage.SERVER: ("global_before", "transmitted", "aggregate", "channel"),
    Vantage.AGGREGATE: ("global_before", "aggregate"),
    Vantage.PARTICIPANT: ("global_before",),
    Vantage.EXTERNAL: (),
    Vantage.PROVIDER: (),
}
"""What each vantage keeps of a round record (every vantage has an entry: ``tests/test_typed_contracts.py``)."""


SHADOW_CACHE: OrderedDict[str, OpenModel] = OrderedDict()
"""Shadow models of this process, least recently used first (each holds a model copy)."""
SHADOW_CACHE_SIZE = 32

DEFAULT_MAX_CANDIDATES = 256
"""Members + non-members scored per run by default: enough for AUC, quick for every attack. TPR at
1% FPR needs >= 1000 non-members to mean >= 10 false positives; pass ``max_candidates`` for that."""


class ViewBuilder:
    def __init__(self, scenario: Scenario, seed: int, built: Plan, transcript: Transcript, tokenizer: PreTrainedTokenizerBase,
                 clients: list[ClientData], task_data: TaskData, truth: GroundTruth, max_candidates: int | None = DEFAULT_MAX_CANDIDATES):
        """``max_candidates``: members + non-members drawn (half each); None draws every record the
        smaller side allows."""
        self.scenario, self.seed, self.built, self.transcript = scenario, seed, built, transcript
        self.tokenizer, self.task_data, self.truth = tokenizer, task_data, truth
        self.candidates = self._draw_candidates(clients, max_candidates, scenario.federation.mia_nonmembers)
        device = _device(built)
        self.layout = built.method.layout()
        self.base_loader = BaseModelLoader(source=built.model_source, task=built.task, tokenizer=tokenizer,
                                           device=device, seed=derive_seed("run", seed, "init"))
        self.shadows = ShadowTrainer.for_run(scenario, seed, built, tokenizer, device) if built.tier.grants_weights() else None

    def _draw_candidates(self, clients: list[ClientData], limit: int | None, nonmember_count: int = 0) -> list[dict]:
        """Members and non-members at random, half each; with ``nonmember_count`` (``mia_nonmembers``),
        the members ``limit`` allows and up to that many non-members (a finer false-positive rate)."""
        rng = generator("run", self.seed, "candidates")
        members = [e for c in clients for e in c.members]
        nonmembers = [e for c in clients for e in c.nonmembers]
        count = min(len(members), len(nonmembers), len(members) if limit is None else limit // 2)
        negatives = count
        if nonmember_count:
            count = min(len(members), len(members) if limit is None else limit // 2)
            negatives = min(len(nonmembers), nonmember_count)
        chosen_members = [members[i] for i in torch.randperm(len(members), generator=rng)[:count].tolist()]
        chosen_non = [nonmembers[i] for i in torch.randperm(len(nonmembers), generator=rng)[:negatives].tolist()]
        pooled = chosen_members + chosen_non
        flags = torch.tensor([1] * count + [0] * negatives)
        order = torch.randperm(len(pooled), generator=rng)
        self.truth.member_flags = flags[order]
        return [pooled[i] for i in order.tolist()]

    def for_attack(self, attack: Attack) -> ThreatView:
        vantage = attack.vantage
        tier = self.built.tier
        return ThreatView(
            vantage=vantage,
            rounds=[seen_from(r, vantage) for r in self.transcript.rounds],
            candidates=list(self.candidates),
            layout=self.layout,
            final_model=tier.handle(self.built.method.model, self.layout, self.built.task, self.tokenizer,
                                    self.transcript.provider_log),
            base_model=self.base_handle(),
            tokenizer=self.tokenizer,
            federation=self.scenario.federation,
            auxiliary=list(self.task_data.auxiliary),
            provider_log=list(self.transcript.provider_log) if vantage == Vantage.PROVIDER else [],
            train_shadow=self.shadows,
            canaries=[dataclasses.replace(c, secret="") for c in self.task_data.canaries],
            pretraining_corpus=tier.public_corpus(self.built.model_source),
        )

    def base_handle(self) -> ProviderAPI | _LazyHandle:
        """The base model through the tier's access, loaded when first used."""
        if self.built.tier.hosted:  # the provider loads it behind its API; queries land in its log
            return ProviderAPI(self.base_loader, self.built.tier.grants, self.transcript.provider_log)
        return _LazyHandle(self.base_loader)

    def train_shadow(self, examples: list[dict], rng: torch.Generator, *, federated: bool = False) -> OpenModel:
        """Shadow training for callers holding the builder (benchmarks); views get ``self.shadows``."""
        if self.shadows is None:
            raise TypeError("this tier does not grant the weights shadow training needs")
        return self.shadows(examples, rng, federated=federated)


@dataclass(eq=False)
class BaseModelLoader:
    """Loads the run's base model (before post-training) once, from the model source and the seed."""

    source: ModelSource
    task: Task
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    seed: int
    _loaded: list[OpenModel] = field(default_factory=list, repr=False)

    def __call__(self) -> OpenModel:
        if not self._loaded:
            model, _ = self.source.load(self.task.kind, self.task.num_labels, self.device, self.seed)
            self._loaded.append(OpenModel(model, None, self.task, self.tokenizer))
        return self._loaded[0]


SHADOW_NEUTRAL = MEASUREMENT_NEUTRAL
"""Federation fields a shadow does not depend on: drawing the learning curve, and how clients are executed."""


@dataclass(frozen=True, eq=False)
class ShadowTrainer:
    """Shadows of the base model with the run's method and settings (open tiers only): a central fine-tune at
    the federation's exposure per record, or (``federated``) the federation itself on the shadow's records.

    Cached across the runs of a sweep: a shadow depends on the model, task, method, federation
    settings, seed and its examples, not on the defenses or attacks, so runs that differ only in those
    share it. The federation fields that do not change training (``SHADOW_NEUTRAL``: the learning curve,
    how clients are executed) are left out of the key (``setting``), which also seeds the fit: Table 4's
    undefended cell, which draws the learning curve, calibrates with the same references as its defended
    cells, so a cell's paired difference measures the defense and not a fresh draw of references. (Until
    session 10 they were in the key: the undefended cell fine-tuned references of its own.) Beyond this
    process's last ``SHADOW_CACHE_SIZE`` shadows, the disk memo (``bench.engine.shadow_memo``) serves a shadow
    any process trained before, so a sweep's workers train each one once."""

    setting: tuple
    """What the shadow depends on besides its examples (the cache key's prefix)."""
    method_name: str
    method_config: object
    """The method's bound config: passed to a fresh method of ``method_name``, never read here."""
    source: ModelSource
    task: Task
    tokenizer: PreTrainedTokenizerBase
    federation: Federation
    device: torch.device
    seed: int

    @classmethod
    def for_run(cls, scenario: Scenario, seed: int, built: Plan, tokenizer: PreTrainedTokenizerBase, device: torch.device) -> ShadowTrainer:
        s = scenario
        federation = {k: v for k, v in dataclasses.asdict(s.federation).items() if k not in SHADOW_NEUTRAL}
        setting = (s.model.name, s.model.params, s.task.name, s.task.params, s.method.name, s.method.params,
                   federation, s.device, seed)
        return cls(setting=setting, method_name=built.method.name, method_config=built.method.config,
                   source=built.model_source, task=built.task, tokenizer=tokenizer, federation=s.federation,
                   device=device, seed=seed)

    def __call__(self, examples: list[dict], rng: torch.Generator, *, federated: bool = False) -> OpenModel:
        key_parts = [*self.setting, examples] + (["federated"] if federated else [])  # central keys as before
        key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
        draw = int(torch.randint(2**31, (1,), generator=rng))
        if key not in SHADOW_CACHE:
            SHADOW_CACHE[key] = self._trained(key, examples, derive_seed(key, draw), federated)
            while len(SHADOW_CACHE) > SHADOW_CACHE_SIZE:
                SHADOW_CACHE.popitem(last=False)
        SHADOW_CACHE.move_to_end(key)
        return SHADOW_CACHE[key]

    def _trained(self, key: str, examples: list[dict], seed: int, federated: bool) -> OpenModel:
        """The shadow: restored from the on-disk memo (``bench.engine.shadow_memo``) when a process trained it
        before, else trained and stored."""
        method = self._fresh_method(seed)
        prepared = shadow_memo.fingerprint(method.model)
        memo_key = shadow_memo.key(key, seed, prepared, self.device, method, self.task, self.source)
        if not shadow_memo.restore(method.model, memo_key):
            (self._fit_federated if federated else self._fit)(method, examples, seed)
            shadow_memo.save(method.model, memo_key, prepared)
        return OpenModel(method.model, method.layout(), self.task, self.tokenizer)

    def _fresh_method(self, seed: int) -> Method:
        """The run's method, prepared on a fresh copy of the base model (the run's initialisation)."""
        task = self.task
        method = METHODS.get(self.method_name)(self.method_config)
        method.task_loss = task.example_losses
        model, _ = self.source.load(task.kind, task.num_labels, self.device, derive_seed("run", self.seed, "init"))
        method.prepare(model, task, generator(seed, "method"))
        return method

    def _fit_federated(self, method: Method, examples: list[dict], seed: int) -> None:
        """Train ``method`` as the target was: ``examples`` dealt at random over the federation's clients as
        their members, then the federation's own round loop (rounds, sampling, local steps, batching,
        aggregation) with no defense and no attack."""
        task, s = self.task, self.federation
        order = torch.randperm(len(examples), generator=generator(seed, "deal")).tolist()
        shares = [chunk.tolist() for chunk in torch.tensor_split(torch.tensor(order, dtype=torch.long), s.clients)]
        fed = fl.Federation(method=method, model=method.model, settings=s, seed_parts=("shadow", seed),
                            clients=[ClientData(members=[examples[i] for i in share], nonmembers=[]) for share in shares],
                            collate=lambda ex: task.collate(ex, self.tokenizer, self.device))
        transcript = Transcript()
        fed.trainer = method.trainer(fed.trainer, transcript)
        fl.run(fed, transcript, GroundTruth())

    def _fit(self, method: Method, examples: list[dict], seed: int) -> None:
        """Train ``method`` centrally on ``examples``, showing each as often as the federation showed a member."""
        task, s, device = self.task, self.federation, self.device
        steps = max(_matching_exposure_steps(s, len(examples)), 1)
        rng = generator(seed, "shadow")
        # a phased method (RLHF: reward model, then policy) walks the federation's rounds, each its share of
        # the steps; trained in one go it would train only its first phase's parameters
        for round_index, round_steps in _phase_schedule(method.phased, s.rounds, steps):
            if method.phased:
                method.on_round_start(round_index, s.rounds)
            job = LocalJob(model=method.model, parameters=[p for _, p in method.named_trainable], examples=examples,
                           collate=lambda ex: task.collate(ex, self.tokenizer, device),
                           example_losses=method.example_losses, steps=round_steps, batch_size=s.batch_size, lr=s.lr,
                           optimizer=s.optimizer, rng=rng)
            method.trainer(train_local, Transcript())(job)


def _phase_schedule(phased: bool, rounds: int, steps: int) -> list[tuple[int, int]]:
    """(round, steps) a shadow trains: every step at once, or for a phased method the steps spread over the
    federation's rounds (each round at least one step) so each phase gets its share."""
    if not phased:
        return [(0, steps)]
    share = [steps * (r + 1) // rounds - steps * r // rounds for r in range(rounds)]
    return [(r, max(n, 1)) for r, n in enumerate(share)]


def _matching_exposure_steps(s: Federation, num_examples: int) -> int:
    """Steps that show each shadow example as often as the federation showed each member."""
    local = 1 if s.protocol == "fedsgd" else s.local_steps
    members_per_client = max(1.0, s.examples_per_client * s.member_fraction)
    participation = s.clients_per_round / s.clients
    return max(1, round(s.rounds * participation * local * num_examples / members_per_client))


class _LazyHandle:
    """Loads the base model only when an attack first uses it (``loader``: a ``BaseModelLoader``)."""

    def __init__(self, loader: BaseModelLoader):
        self._loader = loader

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._loader(), name)


def seen_from(record: RoundRecord, vantage: Vantage) -> RoundRecord:
    """The round record as an attacker at ``vantage`` sees it (``ROUND_FIELDS``)."""
    return _strip(record, ROUND_FIELDS[vantage])


def _strip(record: RoundRecord, keep: tuple[str, ...]) -> RoundRecord:
    return RoundRecord(
        round=record.round,
        sampled=list(record.sampled),
        global_before=record.global_before if "global_before" in keep else None,
        transmitted=dict(record.transmitted) if "transmitted" in keep else {},
        aggregate=record.aggregate if "aggregate" in keep else None,
        weights=dict(record.weights),
        sequences_per_example=record.sequences_per_example,
        last_token_is_label=record.last_token_is_label,
        channel=dict(record.channel) if "channel" in keep else {},
    )


def _device(built: Plan) -> torch.device:
    return next(built.method.model.parameters()).device
