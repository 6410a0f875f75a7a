"""PII extraction, reconstruction and inference, after Lukas et al. 2023, "Analyzing Leakage of
Personally Identifiable Information in Language Models" (IEEE S&P).

The client records carry names, record numbers and dates (``bench.world.synthetic``); the attacker
tags them with the shared rules of ``bench.api.pii`` (the paper tags with a NER model; none is
available offline, see that module). For every PII item of a candidate record (one trial each):
- ``pii-extract``: the model emits it unprompted: it appears among the PII of the model's generations
  from public prompts (the paper samples without prompts; greedy decoding needs prompts for
  diversity, so they are the first words of distinct public auxiliary records). TEXT access.
- ``pii-reconstruct``: the model fills it into its masked slot: prompted with the record up to the
  item, its greedy completion starts with the item. Departure: the paper also scores the text after
  the mask by re-ranking sampled fills; a causal model's greedy fill sees only the prefix. TEXT access.
- ``pii-infer``: the model picks it from a candidate list: the record with the item replaced by each of
  ``choices`` values of the same kind (the true one and others from public records); the pick is the
  filling of lowest summed token NLL. Chance = 1 / choices. LOGITS access.
The base model on the same probes is the floor (it knows the template and the public values, not the
clients' records); non-member candidates are the control.

``pii-provider`` (closed tiers): the provider's extraction is its log. Per item: whether it sat in a
request some client sent the provider (tuning uploads, prompts); floor 0 (the base model's provider
has no client requests). It reads the provider vantage's view only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import torch

from attacks.extraction._common import public_prompts, replace_in, summed_nll
from attacks.mia._common import text_of
from bench.api import pii
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.errors import IncompatibleError
from bench.api.handles import ModelHandle
from bench.api.predictions import Extraction
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import Record

TEXT_KINDS = frozenset({"language", "instruction"})


def _tensor(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def candidate_items(view: ThreatView) -> list[list[pii.Item]]:
    """Each candidate's PII items, positions in its rendered text; a value repeated in a record counts once."""
    out = []
    for example in view.candidates:
        seen, kept = set(), []
        for item in pii.items(text_of(view, example)):
            if (item.kind, item.value) not in seen:
                seen.add((item.kind, item.value))
                kept.append(item)
        out.append(kept)
    return out


def _found_in(emitted: set[tuple[str, str]], per_candidate: list[list[pii.Item]]) -> list[float]:
    return [float(sum((i.kind, i.value) in emitted for i in items)) for items in per_candidate]


class _PIIAttack(Attack):
    vantage = "external"
    family = "extraction"
    task_kinds = TEXT_KINDS


@ATTACKS.register("pii-extract")
class PIIExtraction(_PIIAttack):
    """Fraction of the candidates' PII that appears in the model's generations from public prompts."""

    access = frozenset({Access.TEXT})

    @dataclass(frozen=True, kw_only=True)
    class Config:
        samples: int = doc("distinct public prompts, one greedy generation each", 64)
        prompt_words: int = doc("words of a public record used as a prompt", 2)
        max_new_tokens: int = doc("tokens generated per prompt", 32)

        def __post_init__(self) -> None:
            if min(self.samples, self.prompt_words, self.max_new_tokens) < 1:
                raise ValueError("samples, prompt_words and max_new_tokens must be at least 1")

    def run(self, view: ThreatView, rng: torch.Generator) -> Extraction:
        prompts = public_prompts(view, self.config.prompt_words, self.config.samples)
        if not prompts:
            raise IncompatibleError("pii-extract needs public auxiliary records to draw prompts from")
        items = candidate_items(view)
        emitted = self._emitted(view.final_model, prompts)
        base = self._emitted(view.base_model, prompts)
        return Extraction(hits=_tensor(_found_in(emitted, items)), trials=_tensor([float(len(i)) for i in items]),
                          base_hits=_tensor(_found_in(base, items)),
                          extra={"emitted_pii": float(len(emitted)), "base_emitted_pii": float(len(base))})

    def _emitted(self, handle, prompts: list[str]) -> set[tuple[str, str]]:
        # PII counts only in what the model generated, not in the public prompt it continued
        generated = handle.generate(prompts, max_new_tokens=self.config.max_new_tokens)
        return set().union(*(pii.values(p + g) - pii.values(p) for p, g in zip(prompts, generated, strict=True)))


@ATTACKS.register("pii-reconstruct")
class PIIReconstruction(_PIIAttack):
    """Each PII item masked: does the greedy completion of the record up to it start with it?"""

    access = frozenset({Access.TEXT})

    @dataclass(frozen=True, kw_only=True)
    class Config:
        max_new_tokens: int = doc("tokens generated to fill a masked item", 8)

        def __post_init__(self) -> None:
            if self.max_new_tokens < 1:
                raise ValueError("max_new_tokens must be at least 1")

    def run(self, view: ThreatView, rng: torch.Generator) -> Extraction:
        probes = []  # (candidate, prompt up to the item, the item's value)
        for index, (example, items) in enumerate(zip(view.candidates, candidate_items(view), strict=True)):
            text = text_of(view, example)
            # the prompt stops before the space in front of the item: a byte-level tokenizer writes the
            # space with the item's first token, so a prompt ending in a space asks for an unusual split
            probes += [(index, text[: item.start].rstrip(), item.value) for item in items if text[: item.start].strip()]
        trials = [0.0] * len(view.candidates)
        for index, _, _ in probes:
            trials[index] += 1
        return Extraction(hits=_tensor(self._filled(view.final_model, probes, len(trials))), trials=_tensor(trials),
                          base_hits=_tensor(self._filled(view.base_model, probes, len(trials))))

    def _filled(self, handle, probes: list[tuple[int, str, str]], count: int) -> list[float]:
        hits = [0.0] * count
        if not probes:
            return hits
        completions = handle.generate([p for _, p, _ in probes], max_new_tokens=self.config.max_new_tokens)
        for (index, _, value), completion in zip(probes, completions, strict=True):
            hits[index] += float(completion.strip().startswith(value))
        return hits


@ATTACKS.register("pii-infer")
class PIIInference(_PIIAttack):
    """Each PII item: pick it among ``choices`` same-kind values by the likelihood of the filled record."""

    access = frozenset({Access.LOGITS})

    @dataclass(frozen=True, kw_only=True)
    class Config:
        choices: int = doc("values offered per item (the true one and others of its kind from public records)", 10)

        def __post_init__(self) -> None:
            if self.choices < 2:
                raise ValueError("choices must be at least 2")

    def run(self, view: ThreatView, rng: torch.Generator) -> Extraction:
        probes = infer_probes(view, rng, self.config.choices)
        count = len(view.candidates)
        return Extraction(hits=_tensor(picked(_nll(view.final_model, probes), probes, count)),
                          trials=_tensor(probe_trials(probes, count)),
                          base_hits=_tensor(picked(_nll(view.base_model, probes), probes, count)),
                          chance=1.0 / self.config.choices)


Probe: TypeAlias = tuple[int, list[Record], int]
"""A ``pii-infer`` probe: (candidate index, the record filled with each offered value, index of the true one)."""


def infer_probes(view: ThreatView, rng: torch.Generator, choices: int) -> list[Probe]:
    """For each PII item of each candidate, the record filled with the true value and ``choices`` - 1 others
    of its kind from public records, in a random order; items with too few public values are skipped."""
    pool = _public_values(view)
    probes = []
    for index, (example, items) in enumerate(zip(view.candidates, candidate_items(view), strict=True)):
        for item in items:
            others = [v for v in pool.get(item.kind, []) if v != item.value]
            if len(others) < choices - 1:
                continue  # too few public values of this kind to build a list
            picks = torch.randperm(len(others), generator=rng)[: choices - 1].tolist()
            options = [item.value] + [others[i] for i in picks]
            order = torch.randperm(len(options), generator=rng).tolist()
            options = [options[i] for i in order]
            probes.append((index, [replace_in(example, item.value, o) for o in options], order.index(0)))
    return probes


def probe_trials(probes: list[Probe], count: int) -> list[float]:
    """Items probed per candidate."""
    trials = [0.0] * count
    for index, _, _ in probes:
        trials[index] += 1
    return trials


def probe_records(probes: list[Probe]) -> list[Record]:
    """Every filled record of every probe, in order: what a model scores once for all picks."""
    return [record for _, records, _ in probes for record in records]


def picked(nll: torch.Tensor, probes: list[Probe], count: int) -> list[float]:
    """Per candidate, how many of its items were picked right: the filling of lowest ``nll`` (one value per
    filled record, in ``probe_records`` order) is the true one."""
    hits = [0.0] * count
    start = 0
    for index, records, truth_at in probes:
        chosen = int(torch.argmin(nll[start : start + len(records)]))
        hits[index] += float(chosen == truth_at)
        start += len(records)
    return hits


def _nll(handle: ModelHandle, probes: list[Probe]) -> torch.Tensor:
    return summed_nll(handle, probe_records(probes)) if probes else torch.zeros(0, dtype=torch.float64)


def _public_values(view: ThreatView) -> dict[str, list[str]]:
    pool: dict[str, list[str]] = {}
    for example in view.auxiliary:
        for kind, value in sorted(pii.values(text_of(view, example))):
            if value not in pool.setdefault(kind, []):
                pool[kind].append(value)
    return pool


@ATTACKS.register("pii-provider")
class ProviderLogPII(Attack):
    """Fraction of the candidates' PII that sat in requests clients sent the provider (its log)."""

    vantage = "provider"
    family = "extraction"
    access: frozenset[Access] = frozenset()  # the provider reads its own request log
    task_kinds = frozenset({"classification", "language", "instruction", "preference"})

    def run(self, view: ThreatView, rng: torch.Generator) -> Extraction:
        sent = [r.text for r in view.provider_log if r.client is not None]
        if not sent:
            raise IncompatibleError("no client sent the provider anything: the model is not hosted at this tier")
        logged = set().union(*(pii.values(t) for t in sent))
        items = candidate_items(view)
        trials = _tensor([float(len(i)) for i in items])
        return Extraction(hits=_tensor(_found_in(logged, items)), trials=trials, base_hits=torch.zeros_like(trials),
                          extra={"logged_pii": float(len(logged))})
