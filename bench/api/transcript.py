"""What each vantage saw during a run, and the ground truth kept apart from it.

The engine fills a ``Transcript``; attacks receive a ``ThreatView`` built from it for their vantage
(never the ``GroundTruth``); ``bench.scoring.score`` alone compares predictions with the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import torch
from torch import nn

from bench.api.handles import ModelHandle, OpenHandle, TaskSpec
from bench.api.layout import ParameterLayout
from bench.api.vocabulary import Record, Vantage

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import PreTrainedTokenizerBase

VANTAGES = tuple(v.value for v in Vantage)


class FederationSettings(Protocol):
    """The public federation settings attacks and defenses read. ``bench.spec.scenario.Federation`` is the
    one the engine passes (every field always set: its schema fills the defaults), so no reader needs a
    fallback value; the api layer names the shape because it may not import the spec."""

    @property
    def clients(self) -> int: ...
    @property
    def clients_per_round(self) -> int: ...
    @property
    def rounds(self) -> int: ...
    @property
    def local_steps(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def protocol(self) -> str: ...
    @property
    def optimizer(self) -> str: ...
    @property
    def server_lr(self) -> float: ...


class ProtocolSettings(FederationSettings, Protocol):
    """What a round protocol (``bench.api.protocol.Protocol``) reads of the federation settings: the public
    ones and its own (KD's proxy set and temperature, split learning's cut)."""

    @property
    def cut_layer(self) -> int: ...
    @property
    def proxy_examples(self) -> int: ...
    @property
    def kd_temperature(self) -> float: ...
    @property
    def kd_top_k(self) -> int: ...
    @property
    def distill_steps(self) -> int: ...


class NamedComponent(Protocol):
    """A scenario's component as planned: its registered name (``bench.spec.scenario.Component``)."""

    @property
    def name(self) -> str: ...


class PlannedScenario(Protocol):
    """What a defense reads of the scenario it is planned into (``bench.spec.scenario.Scenario`` has it)."""

    @property
    def federation(self) -> FederationSettings: ...

    @property
    def tier(self) -> NamedComponent: ...


@dataclass
class Canary:
    """A canary record: ``prefix`` + one secret from ``secret_space`` (the true one is ground truth).

    Tasks make them (``bench.world.tasks``), the scorer reads ``secret`` and ``repeats`` from the ground
    truth, and attacks get copies with ``secret`` blanked (``ThreatView.canaries``)."""

    prefix: str
    secret_space: list[str]
    secret: str = field(repr=False)
    """The inserted secret; empty in an attacker's copy."""
    repeats: int = 1
    """Copies of the canary record inserted into the pool (the repetition study's variable)."""


ChannelValue: TypeAlias = list[Record] | float | int | nn.Module
"""What a non-parameter protocol's server holds of a round (``Protocol.round_public``): KD's proxy records and
temperature, split learning's cut layer and client-side layers (a module)."""

class ShadowTraining(Protocol):
    """Trains a shadow model on records (same harness as the run, its own seed from the generator)."""

    def __call__(self, records: list[Record], rng: torch.Generator, *, federated: bool = False) -> OpenHandle:
        """``federated``: through the run's federation (the records dealt to its clients as their members, same
        rounds, local steps and aggregation, no defense); otherwise one central fine-tune showing each record
        as often as the federation showed each member."""
        ...


@dataclass
class RoundRecord:
    """One federated round as the server saw it."""

    round: int
    sampled: list[int]
    global_before: torch.Tensor | None = None
    """Flat trainable state broadcast at the start of the round (kept when an attack needs it)."""
    transmitted: dict[int, Any] = field(default_factory=dict)
    """What the server received from each client: a float update (plain), masked integers (secagg)
    or ciphertexts (he). Kept only when an attack or defense needs individual updates."""
    aggregate: torch.Tensor | None = None
    """The update the server applied to the global state this round."""
    weights: dict[int, float] = field(default_factory=dict)
    """Example counts each client reported (public metadata in FedAvg); empty under uniform (DP-FedAvg)
    aggregation, where clients report none."""
    sequences_per_example: int = 1
    """Sequences each example put through the model with a gradient this round (``Method.sequences_per_example``:
    2 for RLHF's reward and DPO steps, chosen and rejected); public, as the training code is."""
    last_token_is_label: bool = True
    """This round's loss is next-token prediction (``Method.last_token_is_label``; False for a reward model)."""
    channel: dict[str, ChannelValue] = field(default_factory=dict)
    """What a non-parameter protocol's server holds anyway this round (``Protocol.round_public``): KD's
    proxy records, split learning's client-side layers (which it averages). Empty under FedAvg/FedSGD."""


@dataclass
class ProviderRecord:
    """One request a gray/black-box provider received: the provider's own log."""

    client: int | None
    purpose: str  # "inference" | "tuning-upload"
    text: str


@dataclass
class Transcript:
    """Everything observable in one run, by vantage."""

    rounds: list[RoundRecord] = field(default_factory=list)
    provider_log: list[ProviderRecord] = field(default_factory=list)
    egress_records: int = 0
    egress_bytes: int = 0


@dataclass
class GroundTruth:
    """Facts only the scorer sees."""

    member_flags: torch.Tensor | None = None
    """1 for candidates that were in some client's training data, 0 for held-out ones."""
    client_batches: dict[tuple[int, int], list[list[int]]] = field(default_factory=dict)
    """(round, client) -> the token sequences that client trained on in that round."""
    held_out: list[list[int]] = field(default_factory=list)
    """Token sequences of records from the task's distribution that no client trained on and no
    attacker is given (the test split): the inversion scorer's floor, what guessing another record scores."""
    malicious_clients: tuple[int, ...] = ()
    canaries: list[Canary] = field(default_factory=list)
    canary_copies: list[int] = field(default_factory=list)
    """Per canary: how many of its inserted copies some client trained on (members)."""


@dataclass
class ThreatView:
    """What an attacker standing at ``vantage`` may use. Built by ``bench.engine.views``; no ground truth.

    A capability: it carries only what the tier and vantage grant. No live post-training method, no
    back-reference to the runner or the view builder: ``final_model`` and ``base_model`` are the tier's
    handles (at gray/black-box a ``ProviderAPI`` that reaches neither the weights nor the request
    log), and the trainable state's ``layout`` is names and shapes only."""

    vantage: Vantage
    rounds: list[RoundRecord]
    candidates: list[Record]
    """Records whose membership the attacker must guess (members and non-members shuffled)."""
    layout: ParameterLayout
    """The trainable state's names and shapes (flat vectors <-> named tensors)."""
    final_model: ModelHandle
    """The fine-tuned model through the tier's access (``OpenModel`` or ``ProviderAPI``); its ``task`` is the
    task's public definition."""
    base_model: ModelHandle
    """The pre-fine-tuning model through the tier's access (the natural reference model)."""
    tokenizer: PreTrainedTokenizerBase
    federation: FederationSettings
    """The public federation settings (lr, batch size, local steps, protocol)."""
    auxiliary: list[Record] = field(default_factory=list)
    """Public records from the task's distribution, disjoint from every client (for shadows)."""
    provider_log: list[ProviderRecord] = field(default_factory=list)
    train_shadow: ShadowTraining | None = None
    """Runs the same harness on auxiliary data to train a shadow model (``None`` when the tier does not
    grant weights); it holds the model source and settings, not the run."""
    canaries: list[Canary] = field(default_factory=list)
    """Canary prefixes and the secret space (not which secret was inserted)."""
    pretraining_corpus: list[str] | None = None
    """The base model's pretraining documents, when the tier publishes them (open-source)."""

    @property
    def task(self) -> TaskSpec:
        """The task's public definition (record format, batching), as the final model's handle holds it."""
        return self.final_model.task
