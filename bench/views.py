"""Threat views: what each vantage may see of a run, built from the transcript, never the truth.

The builder also draws the membership candidates (members and non-members at random from the same
distribution, equal in number), keeps the matching ground truth for the scorer, and offers shadow
training (central fine-tunes with the run's method and hyperparameters) cached per run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import OrderedDict
from typing import Any

import torch

from bench.registry import METHODS
from bench.seeding import derive_seed, generator
from bench.training import LocalJob, train_local
from bench.transcript import GroundTruth, RoundRecord, ThreatView, Transcript

# What each vantage keeps of a round record.
ROUND_FIELDS = {
    "server": ("global_before", "transmitted", "aggregate"),
    "aggregate": ("global_before", "aggregate"),
    "participant": ("global_before",),
    "external": (),
    "provider": (),
}


SHADOW_CACHE: OrderedDict[str, Any] = OrderedDict()
"""Shadow models of this process, least recently used first (each holds a model copy)."""
SHADOW_CACHE_SIZE = 32

DEFAULT_MAX_CANDIDATES = 256
"""Members + non-members scored per run by default: enough for AUC, quick for every attack. TPR at
1% FPR needs >= 1000 non-members to mean >= 10 false positives; pass ``max_candidates`` for that."""


class ViewBuilder:
    def __init__(self, scenario: Any, seed: int, built: Any, transcript: Any, tokenizer: Any, clients: list[Any],
                 task_data: Any, truth: GroundTruth, max_candidates: int | None = DEFAULT_MAX_CANDIDATES):
        """``max_candidates``: members + non-members drawn (half each); None draws every record the
        smaller side allows."""
        self.scenario, self.seed, self.built, self.transcript = scenario, seed, built, transcript
        self.tokenizer, self.task_data, self.truth = tokenizer, task_data, truth
        self.candidates = self._draw_candidates(clients, max_candidates)
        self._base: Any = None

    def _draw_candidates(self, clients: list[Any], limit: int | None) -> list[dict]:
        rng = generator("run", self.seed, "candidates")
        members = [e for c in clients for e in c.members]
        nonmembers = [e for c in clients for e in c.nonmembers]
        count = min(len(members), len(nonmembers), len(members) if limit is None else limit // 2)
        chosen_members = [members[i] for i in torch.randperm(len(members), generator=rng)[:count].tolist()]
        chosen_non = [nonmembers[i] for i in torch.randperm(len(nonmembers), generator=rng)[:count].tolist()]
        pooled = chosen_members + chosen_non
        flags = torch.tensor([1] * count + [0] * count)
        order = torch.randperm(len(pooled), generator=rng)
        self.truth.member_flags = flags[order]
        return [pooled[i] for i in order.tolist()]

    def for_attack(self, attack: Any) -> ThreatView:
        vantage = attack.vantage
        final = self._handle(self.built.method.model)
        return ThreatView(
            vantage=vantage,
            rounds=[_strip(r, ROUND_FIELDS[vantage]) for r in self.transcript.rounds],
            candidates=list(self.candidates),
            method=self.built.method,
            final_model=final,
            base_model=_LazyHandle(self.base_handle),
            tokenizer=self.tokenizer,
            federation=self.scenario.federation,
            auxiliary=list(self.task_data.auxiliary),
            provider_log=list(self.transcript.provider_log) if vantage == "provider" else [],
            train_shadow=self.train_shadow if self.built.tier.grants_weights() else None,
            canaries=[dataclasses.replace(c, secret="") for c in self.task_data.canaries],
            pretraining_corpus=self.built.tier.public_corpus(self.built.model_source),
        )

    def _handle(self, model: Any) -> Any:
        return self.built.tier.handle(model, self.built.method, self.built.task, self.tokenizer, self.transcript.provider_log)

    def base_handle(self) -> Any:
        if self._base is None:
            model, _ = self.built.model_source.load(self.built.task.kind, self.built.task.num_labels, _device(self.built),
                                                    derive_seed("run", self.seed, "init"))
            self._base = self._handle(model)
        return self._base

    def train_shadow(self, examples: list[dict], rng: torch.Generator) -> Any:
        """A central fine-tune of the base model on ``examples`` with the run's method and settings.

        Cached across the runs of a sweep: a shadow depends on the model, task, method, federation
        settings, seed and its examples, not on the defenses or attacks, so paired Table 4 cells share it."""
        s = self.scenario
        setting = [s.model.name, s.model.params, s.task.name, s.task.params, s.method.name, s.method.params,
                   dataclasses.asdict(s.federation), s.device, self.seed, examples]
        key = hashlib.sha256(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[:20]
        draw = int(torch.randint(2**31, (1,), generator=rng))
        if key not in SHADOW_CACHE:
            SHADOW_CACHE[key] = self._fit_shadow(examples, derive_seed(key, draw))
            while len(SHADOW_CACHE) > SHADOW_CACHE_SIZE:
                SHADOW_CACHE.popitem(last=False)
        SHADOW_CACHE.move_to_end(key)
        return SHADOW_CACHE[key]

    def _fit_shadow(self, examples: list[dict], seed: int) -> Any:
        from bench.tiers import OpenModel

        built, s = self.built, self.scenario.federation
        method = METHODS.get(built.method.name)(built.method.config)
        method.task_loss = built.task.example_losses
        model, _ = built.model_source.load(built.task.kind, built.task.num_labels, _device(built),
                                           derive_seed("run", self.seed, "init"))
        method.prepare(model, built.task, generator(seed, "method"))
        steps = _matching_exposure_steps(s, len(examples))
        job = LocalJob(model=method.model, parameters=[p for _, p in method.named_trainable], examples=examples,
                       collate=lambda ex: built.task.collate(ex, self.tokenizer, _device(built)),
                       example_losses=method.example_losses, steps=max(steps, 1), batch_size=s.batch_size, lr=s.lr,
                       optimizer=s.optimizer, rng=generator(seed, "shadow"))
        method.trainer(train_local, Transcript())(job)
        return OpenModel(method.model, method, built.task, self.tokenizer)


def _matching_exposure_steps(s: Any, num_examples: int) -> int:
    """Steps that show each shadow example as often as the federation showed each member."""
    local = 1 if s.protocol == "fedsgd" else s.local_steps
    members_per_client = max(1.0, s.examples_per_client * s.member_fraction)
    participation = s.clients_per_round / s.clients
    return max(1, round(s.rounds * participation * local * num_examples / members_per_client))


class _LazyHandle:
    """Loads the base model only when an attack first uses it."""

    def __init__(self, factory: Any):
        self._factory = factory

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory(), name)


def _strip(record: RoundRecord, keep: tuple[str, ...]) -> RoundRecord:
    return RoundRecord(
        round=record.round,
        sampled=list(record.sampled),
        global_before=record.global_before if "global_before" in keep else None,
        transmitted=dict(record.transmitted) if "transmitted" in keep else {},
        aggregate=record.aggregate if "aggregate" in keep else None,
        weights=dict(record.weights),
    )


def _device(built: Any) -> torch.device:
    return next(built.method.model.parameters()).device
