"""The attack contract.

An attack stands at one vantage (``bench.api.transcript.VANTAGES``) and turns a ``ThreatView`` into a
prediction (``bench.api.predictions``). Attacks that change training (poisoning, Byzantine clients) also
implement the participant hooks, which the single round loop in ``bench.engine.federation`` calls for the
clients the attack controls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from bench.api.access import Access
from bench.api.protocol import Channel
from bench.api.transcript import ThreatView


class Attack:
    name: ClassVar[str]
    vantage: ClassVar[str] = "external"
    needs: ClassVar[frozenset[str]] = frozenset()
    """Transcript parts the attack reads: ``client_updates``, ``global_states``, ``aggregates``."""
    access: ClassVar[frozenset[Access]] = frozenset()
    """What the attack needs of the model through the tier (``bench.world.tiers.Access``); the runner refuses
    it before training where the tier does not grant all of it. Every attack declares its own."""
    family: ClassVar[str | None] = None
    """The attack family the reports file this attack under (``extraction``); None: read from the name's
    prefix (``mia-``, ``inversion-``, ``poison-``/``byz-``). The runner stores it beside the attack's rows."""
    changes_training: ClassVar[bool] = False
    """True for participant attacks that alter training; they need runs of their own."""
    task_kinds: ClassVar[frozenset[str]] = frozenset({"classification", "language", "instruction", "preference"})
    """Task kinds the attack applies to; checked before any training."""
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.PARAMETERS})
    """The message channels (``bench.api.protocol.Channel``) it can read, when it reads messages
    (``needs`` client updates or aggregates) or rewrites them (``poison_updates``); planning refuses
    it under a protocol whose channel is not among them. Attacks on the final model run under any."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        pass

    def __init__(self, config: Any):
        self.config = config

    # --- participant hooks (only called when ``changes_training``) -------------------------------
    def malicious_fraction(self) -> float:
        return 0.0

    def poison_examples(self, client: int, examples: list[Any], rng: torch.Generator) -> list[Any]:
        """Rewrite a malicious client's local data before training (label flip, backdoor)."""
        return examples

    def poison_updates(
        self,
        round_index: int,
        updates: dict[int, torch.Tensor],
        malicious: list[int],
        rng: torch.Generator,
    ) -> dict[int, torch.Tensor]:
        """Replace the malicious clients' updates; colluding attackers may read the benign ones."""
        return updates

    def check_federation(self, federation: Any) -> str | None:
        """Why this training attack cannot do what it claims at this federation's size, or None (planning)."""
        return None

    def check_poisoned(self, task: Any, tokenizer: Any, examples: list[Any]) -> None:
        """Raise ``UserError`` when a poisoned record would not measure the attack (e.g. a target cut off)."""

    # --- evaluation ------------------------------------------------------------------------------
    def run(self, view: ThreatView, rng: torch.Generator) -> Any:
        raise NotImplementedError
