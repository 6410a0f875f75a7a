"""Gradient-free federated prompt optimisation through a text-only API (black-box tiers).

Follows FedOne (Wang et al. 2025, "FedOne: Query-Efficient Federated Learning for Black-box Discrete
Prompt Learning"), which federates BDPL (Diao et al. 2023, "Black-box Prompt Learning for Pre-trained
Language Models"): the trainable state is the logit vector of a categorical distribution over discrete
prompts; each client samples prompts, queries the model's API with them on its local data, and takes
variance-reduced policy-gradient steps on the logits,
``grad = 1/(I-1) * sum_i (R_i - mean R) * (onehot(k_i) - softmax(logits))``;
the server averages the logits' updates like any other update (FedAvg), so transports and defenses
apply unchanged.

Departures: (1) one categorical over whole candidate instructions (``candidates``), not one per
prompt-token position over a vocabulary; (2) the API returns text only (a label, or generated text),
so the reward is the task metric computed on the client (accuracy, or ROUGE-L F1 against the local
reference response) instead of a loss returned by the API; (3) FedOne's point is activating one
client per round; here the round loop's ``clients_per_round`` decides, as for every method.

What leaves the client: at hosted tiers every query carries a client record (the text to classify,
or the instruction; labels and reference responses stay local) to the provider, which logs it
(purpose ``inference``, with the client id); the record bytes are counted as egress. At open tiers
the same queries go to the local model and nothing leaves. The final model answers with the
highest-scoring candidate prepended to each input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput

from bench.api.config import doc
from bench.api.method import Method
from bench.api.registry import METHODS
from bench.api.vocabulary import PROMPT_TEMPLATE, Record
from bench.client.training import batch_indices
from bench.methods._common import Wrapper, freeze, tokenizer_of
from bench.methods.provider import replaces_training
from bench.scoring.utility import rouge_l
from bench.world.tiers import Access, OpenModel, ProviderAPI, record_egress

if TYPE_CHECKING:  # named in annotations only
    from bench.api.defense import Defense
    from bench.api.transcript import Transcript
    from bench.client.training import LocalJob, Trainer
    from bench.world.tasks import Task

DEFAULT_CANDIDATES = (
    "",
    "Read the record carefully.\n",
    "Answer with the requested fact only.\n",
    "You are a careful clinical assistant.\n",
    "Classify the following clinical note.\n",
    "Reply in one short sentence.\n",
    "Be precise and factual.\n",
    "Answer the question about the patient.\n",
)


@dataclass(frozen=True, kw_only=True)
class TextualPromptSettings:
    candidates: tuple[str, ...] = doc("Candidate instructions prepended to each input (public text).",
                                      DEFAULT_CANDIDATES)
    samples: int = doc("Prompts sampled per local step (I in FedOne; at least 2 for the baseline).", 4)
    step_size: float = doc("Policy-gradient step on the logits (the federation's lr is for gradient methods).", 2.0)
    max_new_tokens: int = doc("Tokens generated per query (instruction tasks).", 16)

    def __post_init__(self) -> None:
        if len(self.candidates) < 2:
            raise ValueError("candidates needs at least two prompts")
        if self.samples < 2:
            raise ValueError("samples must be at least 2 (the baseline is the mean of the others)")


class PromptedModel(Wrapper):
    """The base model answering with the best candidate (highest logit) prepended; the logits are the
    only trainable parameter."""

    def __init__(self, inner: nn.Module, candidate_ids: list[list[int]]):
        super().__init__(inner)
        self.candidate_ids = candidate_ids
        self.extra_positions = max(len(ids) for ids in candidate_ids)
        self.logits = nn.Parameter(torch.zeros(len(candidate_ids), device=next(inner.parameters()).device))

    def prefix(self, rows: int, device: torch.device) -> torch.Tensor:
        ids = self.candidate_ids[int(self.logits.detach().argmax())]
        return torch.tensor(ids, dtype=torch.long, device=device).unsqueeze(0).expand(rows, -1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: object) -> CausalLMOutput | SequenceClassifierOutput:
        kwargs.pop("position_ids", None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prefix = self.prefix(input_ids.shape[0], input_ids.device)
        out = self.inner(input_ids=torch.cat([prefix, input_ids], dim=1),
                         attention_mask=torch.cat([torch.ones_like(prefix), attention_mask], dim=1), **kwargs)
        if out.logits.dim() == 3:  # a language model: drop the prompt's positions
            return CausalLMOutput(logits=out.logits[:, prefix.shape[1] :])
        return SequenceClassifierOutput(logits=out.logits)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor:
        prefix = self.prefix(input_ids.shape[0], input_ids.device)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        out = self.inner.generate(input_ids=torch.cat([prefix, input_ids], dim=1),
                                  attention_mask=torch.cat([torch.ones_like(prefix), mask], dim=1), **kwargs)
        return out[:, prefix.shape[1] :]


def _classification_reward(api: OpenModel | ProviderAPI, candidate: str, examples: list[Record],
                           settings: TextualPromptSettings) -> tuple[float, list[str]]:
    sent = [e["text"] for e in examples]
    predicted = api.predict_labels([{**e, "text": candidate + e["text"]} for e in examples])
    truth = torch.tensor([int(e["label"]) for e in examples])
    return float((predicted.cpu() == truth).float().mean()), sent


def _instruction_reward(api: OpenModel | ProviderAPI, candidate: str, examples: list[Record],
                        settings: TextualPromptSettings) -> tuple[float, list[str]]:
    sent = [PROMPT_TEMPLATE.format(instruction=e["instruction"]) for e in examples]
    outputs = api.generate([candidate + s for s in sent], max_new_tokens=settings.max_new_tokens)
    return rouge_l(outputs, [e["response"] for e in examples]), sent


REWARDS: dict[str, Callable[[OpenModel | ProviderAPI, str, list[Record], TextualPromptSettings], tuple[float, list[str]]]] = {
    "classification": _classification_reward,
    "instruction": _instruction_reward,
}


def policy_gradient(logits: torch.Tensor, sampled: list[int], rewards: list[float]) -> torch.Tensor:
    """BDPL's variance-reduced estimate of d E[R] / d logits (the mean reward is the baseline)."""
    probs = torch.softmax(logits.detach().float(), dim=0)
    baseline = sum(rewards) / len(rewards)
    grad = torch.zeros_like(probs)
    for k, reward in zip(sampled, rewards, strict=True):
        grad += (reward - baseline) * (torch.nn.functional.one_hot(torch.tensor(k), len(probs)).to(probs) - probs)
    return grad / (len(sampled) - 1)


@METHODS.register("textual-prompt")
class TextualPrompt(Method):
    """Black-box: clients score discrete prompts through the text API; policy gradient on their logits (FedOne)."""

    Config = TextualPromptSettings
    needs = frozenset({Access.TEXT})
    task_kinds = frozenset(REWARDS)

    def build(self, model: nn.Module, task: Task, rng: torch.Generator) -> nn.Module:
        self.task, self.tokenizer = task, tokenizer_of(model)
        freeze(model)
        ids = [self.tokenizer(c, add_special_tokens=False).input_ids if c else [] for c in self.config.candidates]
        return PromptedModel(model, ids)

    def check_compatible(self, defenses: list[Defense]) -> str | None:
        for defense in defenses:
            if replaces_training(defense):
                return f"textual-prompt is gradient-free: {defense.name} replaces local training with its own trainer"
        return None

    def _api(self, client: int | None, transcript: Transcript) -> OpenModel | ProviderAPI:
        local = OpenModel(self.model.inner, None, self.task, self.tokenizer)
        if not self.hosted:
            return local
        return ProviderAPI(local, self.tier.grants, transcript.provider_log, client=client)

    def trainer(self, default: Trainer, transcript: Transcript) -> Trainer:
        def optimise_prompt(job: LocalJob) -> dict[str, float]:
            api = self._api(job.client, transcript)
            logits = self.model.logits
            mean_rewards = []
            for indices in batch_indices(job):
                job.seen.append(indices)
                examples = [job.examples[i] for i in indices]
                sampled = torch.multinomial(torch.softmax(logits.detach().float().cpu(), 0), self.config.samples,
                                            replacement=True, generator=job.rng).tolist()
                rewards = self._rewards(api, sampled, examples, transcript)
                with torch.no_grad():
                    logits += self.config.step_size * policy_gradient(logits, sampled, rewards).to(logits.device)
                mean_rewards.append(sum(rewards) / len(rewards))
            return {"loss": -sum(mean_rewards) / max(len(mean_rewards), 1)}

        return optimise_prompt

    def _rewards(self, api: OpenModel | ProviderAPI, sampled: list[int], examples: list[Record],
                 transcript: Transcript) -> list[float]:
        reward_of = REWARDS[self.task.kind]
        cache: dict[int, float] = {}  # a prompt drawn twice in one step is queried once
        for k in dict.fromkeys(sampled):
            cache[k], sent = reward_of(api, self.config.candidates[k], examples, self.config)
            if self.hosted:
                record_egress(transcript, sent)
        return [cache[k] for k in sampled]
