"""What a plugin is handed by the layers above the api, named as Protocols.

Attacks and defenses import only ``bench.api`` (and ``bench.client``), yet they receive world and spec
objects: the tier's model handles (``bench.world.tiers.OpenModel`` / ``ProviderAPI``), the task's public
definition (``bench.world.tasks.Task``), the canaries (``bench.world.tasks.Canary``), the scenario's
federation (``bench.spec.scenario.Federation``). Each Protocol below names what plugins read of one of
them; the class the engine passes has it structurally (``tests/test_plugin_types.py`` checks each pair),
so no plugin needs a ``getattr`` fallback to find out.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import torch
from torch import nn

from bench.api.transcript import FederationSettings, NamedComponent
from bench.api.vocabulary import Record, TaskKind


class TaskDefinition(Protocol):
    """A task's public definition (record format, not its data): what ``bench.world.tasks.Task`` shows."""

    @property
    def kind(self) -> TaskKind: ...

    def text_of(self, example: Record) -> str:
        """The example as one text, as the task renders it (what a provider logs)."""
        ...


class ModelHandle(Protocol):
    """A model through the tier's access: ``OpenModel`` (open tiers) or ``ProviderAPI`` (gray/black box),
    whose requests the tier may refuse (``TierAccessError``) and the provider logs."""

    @property
    def task(self) -> TaskDefinition | None:
        """The task the model was trained for; None only for a stand-in model that has none (the
        example's own fields then say what it is)."""
        ...

    def example_losses(self, examples: list[Record]) -> torch.Tensor: ...

    def class_logits(self, examples: list[Record]) -> torch.Tensor: ...

    def token_logits(self, examples: list[Record]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per example: (logits at each scored position, the true next tokens)."""
        ...

    def predict_labels(self, examples: list[Record]) -> torch.Tensor: ...

    def generate(self, prompts: list[str], max_new_tokens: int = 16) -> list[str]: ...


class WeightsHandle(ModelHandle, Protocol):
    """An ``OpenModel`` with a layout: the live model and its trainable state as flat vectors, what
    white-box attacks (gradient inversion) need; the tier grants it only with the weights."""

    model: nn.Module

    @property
    def named_trainable(self) -> list[tuple[str, nn.Parameter]]: ...

    @property
    def num_trainable(self) -> int: ...

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def get_flat(self) -> torch.Tensor: ...

    def set_flat(self, flat: torch.Tensor) -> None: ...

    def at_state(self, flat: torch.Tensor) -> AbstractContextManager[nn.Module]: ...


class CanaryView(Protocol):
    """A canary as an attacker holds it (``ThreatView.canaries``): its prefix and the secret space, not
    which secret was inserted."""

    @property
    def prefix(self) -> str: ...

    @property
    def secret_space(self) -> Sequence[str]: ...


class ExchangeSettings(FederationSettings, Protocol):
    """The federation settings of a protocol that shares more than parameters (KD's logits)."""

    @property
    def kd_top_k(self) -> int:
        """Logits shared per row under KD (0: every logit)."""
        ...


class ExchangeScenario(Protocol):
    """What a channel defense (``dp-logits``) reads of the scenario it is planned into."""

    @property
    def federation(self) -> ExchangeSettings: ...

    @property
    def tier(self) -> NamedComponent: ...


class TaskSettings(Protocol):
    """The settings every task config has (``bench.world.tasks.Task.Config``)."""

    @property
    def max_length(self) -> int:
        """Tokens per example after truncation."""
        ...


class ConfiguredTask(Protocol):
    """A task as a training attack checks its poisoned records against it (``Attack.check_poisoned``)."""

    @property
    def config(self) -> TaskSettings: ...
