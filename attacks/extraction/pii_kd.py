"""PII inference from the logits a KD client shared (server vantage, ``federation.protocol: kd``).

Knowledge distillation's uplink is a client's softened distribution on a public proxy set; the records
themselves never leave the client. What the server can reconstruct of them goes through a copy: it
distils its own model, from the state it broadcast that round, toward the client's distribution (the
copy ``mia-kd-logits`` builds, ``attacks/mia/_kd.py``), then asks the copy the ``pii-infer`` question of
Lukas et al. 2023 ("Analyzing Leakage of Personally Identifiable Information in Language Models", IEEE
S&P): for each PII item of a candidate record, which of ``choices`` same-kind values fills it. A filling
is scored by how much the copy lowered its summed token NLL against the broadcast model (the reference
attack of Carlini et al. 2021 with the server's own model as reference, as ``mia-kd-logits`` scores
membership), and the lowest over the clients' copies is picked: the server does not know which client
holds a candidate.

Floor: the same pick by the broadcast model alone, what the server knows without that round's logits
(not the base model: the global model has already distilled earlier consensus). Chance: 1 / choices.

Where the proxy set lets it: on a proxy disjoint from the clients (the protocol's rule) the copy learns
the client's model only where it generalises to public text, so PII the client memorised reaches the
copy only through that; a proxy that overlaps a client's records hands the server their distributions
position by position. Under a secure sum (``secagg`` on the logit sum) the one teacher is the
consensus. Departure from Lukas et al.: they query the fine-tuned model itself; here it is reconstructed
from its outputs on public text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.extraction._common import summed_nll
from attacks.extraction.pii import TEXT_KINDS, infer_probes, picked, probe_records, probe_trials
from attacks.mia._kd import distil_copy, teachers
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.errors import IncompatibleError
from bench.api.predictions import Extraction
from bench.api.protocol import Channel
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, Vantage


@ATTACKS.register("pii-infer-kd")
class SharedLogitsPIIInference(Attack):
    """Pick each candidate's PII by how much a copy distilled from a client's shared logits prefers it."""

    vantage = Vantage.SERVER
    family = AttackFamily.EXTRACTION
    access = frozenset({Access.WEIGHTS, Access.LOGITS})
    needs = frozenset({"client_updates", "global_states"})
    channels = frozenset({Channel.LOGITS})
    task_kinds = TEXT_KINDS

    @dataclass(frozen=True, kw_only=True)
    class Config:
        choices: int = doc("values offered per item (the true one and others of its kind from public records)", 10)
        steps: int = doc("Distillation steps of each client copy on the proxy set (>= 1).", 30)
        lr: float = doc("Adam learning rate of the copy (> 0).", 1e-3)
        rounds: int = doc("Attack the messages of the last this many rounds (>= 1).", 1)

        def __post_init__(self) -> None:
            if self.choices < 2:
                raise ValueError("choices must be at least 2")
            if self.steps < 1 or self.rounds < 1:
                raise ValueError("steps and rounds must be at least 1")
            if self.lr <= 0:
                raise ValueError("lr must be > 0")

    def run(self, view: ThreatView, rng: torch.Generator) -> Extraction:
        attacked = [r for r in view.rounds if r.transmitted][-self.config.rounds:]
        if not attacked:
            raise IncompatibleError("pii-infer-kd reads shared logits; this run's server saw none")
        probes = infer_probes(view, rng, self.config.choices)
        count = len(view.candidates)
        if not probes:
            raise IncompatibleError("pii-infer-kd needs candidates with PII and public values to offer against it")
        records = probe_records(probes)
        model = view.final_model
        saved = model.get_flat()
        lowered = torch.full((len(records),), torch.inf, dtype=torch.float64)
        try:
            model.set_flat(attacked[-1].global_before)
            floor = summed_nll(model, records)
            for record in attacked:
                model.set_flat(record.global_before)
                reference = summed_nll(model, records)
                for teacher in teachers(record, "pii-infer-kd"):
                    distil_copy(model, record.global_before, record, teacher, steps=self.config.steps,
                                lr=self.config.lr)
                    lowered = torch.minimum(lowered, summed_nll(model, records) - reference)
        finally:
            model.set_flat(saved)
        return Extraction(hits=torch.tensor(picked(lowered, probes, count), dtype=torch.float64),
                          trials=torch.tensor(probe_trials(probes, count), dtype=torch.float64),
                          base_hits=torch.tensor(picked(floor, probes, count), dtype=torch.float64),
                          chance=1.0 / self.config.choices)
