"""The post-training method contract (PEFT-style: a config dataclass per method, registered by name).

A method turns the base model into the model clients train (``prepare``), names its trainable
parameters, and reads/writes them as one flat tensor so that the round loop, transports, defenses and
attacks all work on flat vectors.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

from bench.api.access import Access
from bench.api.defense import Defense, LocalTrainer
from bench.api.handles import ModelHandle, TaskSpec
from bench.api.layout import ParameterLayout
from bench.api.metrics import Metric
from bench.api.transcript import Transcript
from bench.api.vocabulary import Record

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import PretrainedConfig

ExampleLosses = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
"""Per-example training losses of a batch (``Task.example_losses``, ``Method.example_losses``)."""


class HostingTier(Protocol):
    """What a method reads of the scenario's tier (``bench.world.tiers.Tier`` has it)."""

    @property
    def hosted(self) -> bool: ...
    @property
    def grants(self) -> frozenset[Access]: ...


class Method(abc.ABC):
    name: ClassVar[str]
    needs: ClassVar[frozenset[Access]] = frozenset({Access.WEIGHTS, Access.GRADIENTS})
    task_kinds: ClassVar[frozenset[str]] = frozenset({"classification", "language", "instruction"})
    """Task kinds (``Task.kind``) this method can train on."""
    phased: ClassVar[bool] = False
    """What it trains changes with the round (``on_round_start`` switches phase): a central fine-tune that
    stands in for the federation (a shadow or reference model) must walk the same rounds, or it trains
    only the first phase."""
    batchable: ClassVar[bool] = False
    """Its clients can train together as one vmapped computation (``bench.client.batched``): the loss is the
    task's and the forward depends on the trainable tensors only through ``named_trainable``."""

    def batching_problem(self) -> str | None:
        """Why this method's clients cannot train together as one vmapped computation (None: they can);
        a method whose answer depends on its settings overrides this."""
        return None if self.batchable else f"method {self.name} is not batchable"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        pass

    def __init__(self, config: Any):
        self.config = config
        self.model: nn.Module | None = None
        self._named: list[tuple[str, nn.Parameter]] = []

    # --- to implement ----------------------------------------------------------------------------
    @abc.abstractmethod
    def build(self, model: nn.Module, task: TaskSpec, rng: torch.Generator) -> nn.Module:
        """Return the model clients train (may wrap ``model``); mark only the method's state trainable."""

    def on_round_start(self, round_index: int, rounds: int) -> None:
        """Called by the round loop before clients train (multi-phase methods switch phase here)."""
        return None

    @property
    def sequences_per_example(self) -> int:
        """Sequences one training example puts through the model with a gradient in the current phase:
        1, or 2 for a preference loss (chosen and rejected answer). Public like the training code, it is
        recorded per round (``RoundRecord.sequences_per_example``): inversion attacks size a batch by it."""
        return 1

    @property
    def last_token_is_label(self) -> bool:
        """The current phase's loss is next-token prediction, where each sequence's final token is only a
        label (inversion recovers it separately); False where every token is an input (a reward model
        reading the last token's hidden state). Recorded per round like ``sequences_per_example``."""
        return True

    def trained_sequences(self, batch: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(input ids, attention mask) of each group of the batch's sequences the current phase trains on:
        what a client's batch is, as an inversion is scored against it."""
        return [(batch["input_ids"], batch["attention_mask"])]

    def trainer(self, default: LocalTrainer, transcript: Transcript) -> LocalTrainer:
        """The local trainer clients use; methods that train through a provider wrap ``default``
        (and record egress in ``transcript``)."""
        return default

    def check_compatible(self, defenses: list[Defense]) -> str | None:
        """Why this method cannot run with ``defenses`` (decided before training), or None."""
        return None

    def check_model(self, architecture: PretrainedConfig | None, task_kind: str) -> str | None:
        """Why this method cannot attach to a model with the transformers config ``architecture`` (None
        for zoo models) trained on ``task_kind``, or None. Called before any weights are loaded; methods
        that place modules by name (LoRA, adapters) check the names exist (``_common.check_on_skeleton``)."""
        return None

    def extra_utility(self, handle: ModelHandle, task: TaskSpec, test: list[Record]) -> list[Metric]:
        """Utility metrics only this method can measure (RLHF: reward accuracy); default none."""
        return []

    # --- shared machinery ------------------------------------------------------------------------
    def prepare(self, model: nn.Module, task: TaskSpec, rng: torch.Generator) -> nn.Module:
        self.model = self.build(model, task, rng)
        self._named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not self._named:
            raise RuntimeError(f"method {self.name} left no trainable parameters")
        return self.model

    def example_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-example training loss; the task knows how (methods like DPO override)."""
        return self.task_loss(model, batch)

    task_loss: ExampleLosses | None = None  # set by the runner to ``task.example_losses``
    tier: HostingTier | None = None  # set by the runner: the scenario's tier (hosted tiers send client data out)

    @property
    def hosted(self) -> bool:
        """True when a provider hosts the model, so client data sent to it leaves the client."""
        return self.tier is not None and bool(self.tier.hosted)

    @property
    def named_trainable(self) -> list[tuple[str, nn.Parameter]]:
        return self._named

    @property
    def num_trainable(self) -> int:
        return sum(p.numel() for _, p in self._named)

    def get_flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).float() for _, p in self._named])

    def flat_with(self, replaced: dict[str, torch.Tensor]) -> torch.Tensor:
        """The flat state (as ``get_flat``) with the named tensors in place of those parameters: batched
        training's clients, of which only the trainable part (``named_trainable``) is stacked."""
        return torch.cat([replaced.get(n, p).detach().reshape(-1).float() for n, p in self._named])

    def set_flat(self, flat: torch.Tensor) -> None:
        with torch.no_grad():
            offset = 0
            for _, p in self._named:
                n = p.numel()
                p.copy_(flat[offset : offset + n].view_as(p).to(p.dtype))
                offset += n

    def layout(self) -> ParameterLayout:
        """Names and shapes of the flat state (what attacks get instead of this live object)."""
        return ParameterLayout.of(self._named)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views into ``flat`` (same shapes as the trainable parameters)."""
        out, offset = {}, 0
        for name, p in self._named:
            out[name] = flat[offset : offset + p.numel()].view(p.shape)
            offset += p.numel()
        return out
