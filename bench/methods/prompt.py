"""Soft prompt tuning (Lester et al. 2021) and prefix tuning (Li & Liang 2021), through peft.

Prompt tuning prepends ``num_virtual_tokens`` trainable embeddings to the input; prefix tuning
prepends trainable keys and values to every attention layer. A classification head stays trainable
(a cheap stand-in for Lester et al.'s frozen LM head with label words); the soft prompt's head reads
the mean of the input's final hidden states by default (``pooling``), since a frozen body never learns
to gather a note into its last token.

peft holds the trainable state (its prompt encoder) and generates; for prompt tuning the forward
pass is done here (``SoftPromptModel``): peft embeds the prompt once and repeats it over the batch,
which hides per-example gradients from DP-SGD; its causal LM returns logits for the virtual
positions too (cut off here so logits line up with the input); and its classifier, seeing only
embeddings, pools the last position even when that is padding (here: the real tokens only).
Position ids are dropped: peft ignores them for prompt learning anyway.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput

from bench.api.config import doc
from bench.api.method import Method
from bench.api.registry import METHODS
from bench.api.vocabulary import TaskKind
from bench.methods._common import HEAD_NAMES, Wrapper, seeded

if TYPE_CHECKING:  # named in annotations only
    from peft import PromptLearningConfig
    from transformers.utils import ModelOutput

    from bench.world.tasks import Task

PROMPT_INITS = {"random": "RANDOM", "vocab": "SAMPLE_VOCAB"}
"""Soft-prompt initialisations (peft's names): N(0, 1) rows, or embeddings of random vocabulary tokens."""


def last_real(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's final hidden state at its last real token (right padding)."""
    return states[torch.arange(states.shape[0], device=states.device), mask.sum(dim=1) - 1]


def mean_real(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's final hidden states averaged over its real tokens (padding left out)."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


POOLINGS = {"last": last_real, "mean": mean_real}
"""Classifier readouts of a soft-prompted model: what the head reads from the input's final hidden states."""


@dataclass(frozen=True, kw_only=True)
class PromptSettings:
    num_virtual_tokens: int = doc("Trainable virtual tokens (prompt length).", 8)

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ValueError("num_virtual_tokens must be at least 1")


@dataclass(frozen=True, kw_only=True)
class SoftPromptSettings(PromptSettings):
    init: str = doc("'vocab' (embeddings of random vocabulary tokens, Lester et al. 2021's better start: the prompt "
                    "starts at the scale of real token embeddings, about 0.8 per row on the zoo models against 11 for "
                    "N(0, 1) rows) or 'random' (N(0, 1) rows, peft's default).",
                    "vocab")
    pooling: str = doc(
        "What the classification head reads: 'mean' (the final hidden states averaged over the real tokens) or "
        "'last' (the last real token's, as Hugging Face's sequence classifiers read). The body is frozen, so "
        "nothing teaches the last token to gather the whole note as fine-tuning does: on Table 4's setting the "
        "last-token readout plateaus near 0.73 whatever the steps, and the mean reaches 0.81 "
        "(scenarios/studies/prompt-tuning-readout.yaml).",
        "mean")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in PROMPT_INITS:
            raise ValueError(f"init must be one of {', '.join(PROMPT_INITS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}")


class SoftPromptModel(Wrapper):
    """peft's prompt-tuning model, with the forward pass done here so that (1) every example gets its
    own row of prompt embeddings (peft embeds one row and repeats it, which hides per-example
    gradients from DP-SGD), (2) causal-LM logits line up with the real tokens, and (3) a classifier
    reads the real tokens only (``POOLINGS``: their mean, or the last one), never a virtual or pad position."""

    generates_batched = False
    """peft's prompt-tuning ``generate`` ignores position ids: left padding would sit between the virtual
    tokens and the prompt and shift the prompt's positions (14 of 18 greedy outputs changed), so its
    handle generates a prompt at a time."""

    def __init__(self, inner: nn.Module, classification: bool, pooling: str = "mean"):
        super().__init__(inner)
        self.classification = classification
        self.pool = POOLINGS[pooling]
        self.extra_positions = inner.active_peft_config.num_virtual_tokens

    def _prompts(self, rows: int) -> torch.Tensor:
        adapter = self.inner.active_adapter
        encoder = self.inner.prompt_encoder[adapter]
        tokens = self.inner.prompt_tokens[adapter].unsqueeze(0).expand(rows, -1).to(encoder.embedding.weight.device)
        return encoder(tokens)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: object
                ) -> CausalLMOutput | SequenceClassifierOutput:
        kwargs.pop("position_ids", None)  # positions restart under the prompt, as in peft
        hf = self.inner.base_model  # prompt learning leaves the Hugging Face model itself here
        # embeddings in place of ids: gradient-matching inversion optimises them (inversion-optim)
        embeds = inputs_embeds if inputs_embeds is not None else hf.get_input_embeddings()(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        prompts = self._prompts(embeds.shape[0]).to(embeds.dtype)
        virtual = prompts.shape[1]
        inputs = torch.cat([prompts, embeds], dim=1)
        mask = torch.cat([torch.ones(prompts.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device),
                          attention_mask], dim=1)
        if self.classification:
            hidden = hf.base_model(inputs_embeds=inputs, attention_mask=mask, **kwargs)
            pooled = self.pool(hidden.last_hidden_state[:, virtual:], attention_mask)
            return SequenceClassifierOutput(logits=_head(hf)(pooled), hidden_states=hidden.hidden_states)
        out = hf(inputs_embeds=inputs, attention_mask=mask, **kwargs)
        states = tuple(h[:, virtual:] for h in out.hidden_states) if out.hidden_states is not None else None
        return CausalLMOutput(logits=out.logits[:, virtual:], hidden_states=states)


def _head(model: nn.Module) -> nn.Module:
    for name in HEAD_NAMES:
        if hasattr(model, name):
            return getattr(model, name)
    raise ValueError(f"no classification head ({', '.join(HEAD_NAMES)}) on {type(model).__name__}")


class PrefixModel(Wrapper):
    """peft's prefix-tuning model; position ids are dropped (peft ignores them, with a warning)."""

    def __init__(self, inner: nn.Module):
        super().__init__(inner)
        self.extra_positions = inner.active_peft_config.num_virtual_tokens

    def forward(self, *args: object, **kwargs: object) -> ModelOutput:
        kwargs.pop("position_ids", None)
        return self.inner(*args, **kwargs)


class PromptLearning(Method):
    """Shared build: a peft prompt-learning model for the task (classifier or causal LM), then wrapped."""

    batchable = True

    @abc.abstractmethod
    def peft_config_class(self) -> type[PromptLearningConfig]:
        """The peft config class of this prompt-learning variant."""

    def peft_settings(self) -> dict[str, int | str | bool]:
        return {"num_virtual_tokens": self.config.num_virtual_tokens}

    def build(self, model: nn.Module, task: Task, rng: torch.Generator) -> nn.Module:
        from peft import TaskType, get_peft_model

        task_type = TaskType.SEQ_CLS if task.kind == TaskKind.CLASSIFICATION else TaskType.CAUSAL_LM
        with seeded(rng):
            peft_model = get_peft_model(model, self.peft_config_class()(task_type=task_type, **self.peft_settings()))
        return self.wrap(peft_model, task)

    @abc.abstractmethod
    def wrap(self, peft_model: nn.Module, task: Task) -> nn.Module:
        """The model clients train around ``peft_model`` (its virtual tokens the only trainable state)."""


@METHODS.register("prompt-tuning")
class PromptTuning(PromptLearning):
    """Trainable soft-prompt embeddings prepended to the input (Lester et al. 2021, peft)."""

    Config = SoftPromptSettings

    def wrap(self, peft_model: nn.Module, task: Task) -> nn.Module:
        return SoftPromptModel(peft_model, task.kind == TaskKind.CLASSIFICATION, self.config.pooling)

    def peft_config_class(self) -> type[PromptLearningConfig]:
        from peft import PromptTuningConfig

        return PromptTuningConfig

    def peft_settings(self) -> dict[str, int | str | bool]:
        return {**super().peft_settings(), "prompt_tuning_init": PROMPT_INITS[self.config.init]}


@dataclass(frozen=True, kw_only=True)
class PrefixSettings(PromptSettings):
    projection: bool = doc("Reparametrise the prefix through an MLP (Li & Liang's stabiliser).", False)
    projection_width: int = doc("Hidden width of that MLP.", 64)


@METHODS.register("prefix-tuning")
class PrefixTuning(PromptLearning):
    """Trainable key/value prefixes in every attention layer (Li & Liang 2021, peft)."""

    Config = PrefixSettings

    def peft_config_class(self) -> type[PromptLearningConfig]:
        from peft import PrefixTuningConfig

        return PrefixTuningConfig

    def wrap(self, peft_model: nn.Module, task: Task) -> nn.Module:
        return PrefixModel(peft_model)

    def peft_settings(self) -> dict[str, int | str | bool]:
        return {**super().peft_settings(), "prefix_projection": self.config.projection,
                "encoder_hidden_size": self.config.projection_width}
