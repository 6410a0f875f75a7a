"""The attack contract.

An attack stands at one vantage (``bench.api.transcript.VANTAGES``) and turns a ``ThreatView`` into a
prediction (``bench.api.predictions``). Attacks that change training (poisoning, Byzantine clients) also
implement the participant hooks, which the single round loop in ``bench.engine.federation`` calls for the
clients the attack controls. A malicious server (``tampers_broadcast``) chooses the trainable state it
broadcasts each round (``tamper_broadcast``); it changes training too, so it declares ``changes_training``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from bench.api.access import Access
from bench.api.handles import TaskSpec
from bench.api.predictions import Prediction
from bench.api.protocol import Channel
from bench.api.transcript import FederationSettings, ThreatView
from bench.api.vocabulary import AttackFamily, AttackRole, Record, TaskKind, Vantage

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import PreTrainedTokenizerBase

    from bench.api.method import Method


@dataclass(frozen=True)
class ServerHold:
    """What the server holds when it chooses the state it broadcasts (``Attack.tamper_broadcast``): the
    shared model (frozen base and trainable layout), the task's public records, and the clients' batching."""

    method: Method
    public: list[Record]
    """Public records from the task's distribution, disjoint from every client."""
    collate: Callable[[list[Record]], dict[str, torch.Tensor]]
    """Records -> a model batch, exactly as the clients batch theirs."""


class Attack(abc.ABC):
    name: ClassVar[str]
    vantage: ClassVar[Vantage] = Vantage.EXTERNAL
    needs: ClassVar[frozenset[str]] = frozenset()
    """Transcript parts the attack reads: ``client_updates``, ``global_states``, ``aggregates``."""
    access: ClassVar[frozenset[Access]] = frozenset()
    """What the attack needs of the model through the tier (``bench.world.tiers.Access``); the runner refuses
    it before training where the tier does not grant all of it. Every attack declares its own."""
    family: ClassVar[AttackFamily]
    """The attack family the reports file this attack under; every attack declares one (checked when it
    is built, at planning). The runner stores it beside the attack's rows: reporting never reads names."""
    role: ClassVar[AttackRole | None] = None
    """The attack's Table 4 role; None: the role named like its family. A poisoning attack declares
    ``BACKDOOR`` or ``BYZANTINE`` (see ``table_role``)."""
    changes_training: ClassVar[bool] = False
    """True for participant attacks that alter training; they need runs of their own."""
    tampers_broadcast: ClassVar[bool] = False
    """True for a malicious server that rewrites the trainable state it broadcasts (``tamper_broadcast``);
    the round loop calls that hook only for these (and only for attacks that also change training)."""
    task_kinds: ClassVar[frozenset[TaskKind]] = frozenset(TaskKind)
    """Task kinds the attack applies to; checked before any training."""
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.PARAMETERS})
    """The message channels (``bench.api.protocol.Channel``) it can read, when it reads messages
    (``needs`` client updates or aggregates) or rewrites them (``poison_updates``); planning refuses
    it under a protocol whose channel is not among them. Attacks on the final model run under any."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        pass

    def __init__(self, config: Any):
        declaration_problem = _declaration_problem(type(self))
        if declaration_problem:
            raise TypeError(declaration_problem)
        self.config = config

    @classmethod
    def table_role(cls) -> AttackRole:
        """The Table 4 role this attack's rows carry (``role``, else the role named like ``family``)."""
        return cls.role if cls.role is not None else AttackRole(cls.family)

    # --- participant hooks (only called when ``changes_training``) -------------------------------
    def malicious_fraction(self) -> float:
        return 0.0

    def poison_examples(self, client: int, examples: list[Record], rng: torch.Generator) -> list[Record]:
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

    def tamper_broadcast(self, round_index: int, state: torch.Tensor, server: ServerHold,
                         rng: torch.Generator) -> torch.Tensor:
        """The flat trainable state a malicious server broadcasts in round ``round_index`` instead of
        ``state`` (what honest training reached). Only trainable parameters travel, so the frozen base
        cannot change; raise ``IncompatibleError`` when the method gives the attack nothing to set."""
        return state

    def check_federation(self, federation: FederationSettings) -> str | None:
        """Why this training attack cannot do what it claims at this federation's size, or None (planning)."""
        return None

    def check_poisoned(self, task: TaskSpec, tokenizer: PreTrainedTokenizerBase, examples: list[Record]) -> None:
        """Raise ``UserError`` when a poisoned record would not measure the attack (e.g. a target cut off)."""
        return None

    # --- evaluation ------------------------------------------------------------------------------
    @abc.abstractmethod
    def run(self, view: ThreatView, rng: torch.Generator) -> Prediction:
        """The attack's prediction (``bench.api.predictions``) from what its vantage sees."""


def _declaration_problem(cls: type[Attack]) -> str | None:
    """Why ``cls`` does not declare what the runner stores beside its rows, or None."""
    family = next((vars(k)["family"] for k in cls.__mro__ if "family" in vars(k)), None)
    if family not in set(AttackFamily):
        return f"{cls.__qualname__} must declare family = AttackFamily.<one of {', '.join(AttackFamily)}>, got {family!r}"
    if family == AttackFamily.POISON and cls.role not in (AttackRole.BACKDOOR, AttackRole.BYZANTINE):
        return f"{cls.__qualname__} is a poisoning attack and must declare role = AttackRole.BACKDOOR or BYZANTINE"
    if cls.role == AttackRole.MALICIOUS_INVERSION and not (family == AttackFamily.INVERSION and cls.tampers_broadcast):
        return f"{cls.__qualname__}: role {cls.role} is for inversion attacks that tamper with the broadcast"
    if family != AttackFamily.POISON and cls.role not in (None, AttackRole(family), AttackRole.MALICIOUS_INVERSION):
        return f"{cls.__qualname__}: role {cls.role} does not belong to family {family}"
    return None
