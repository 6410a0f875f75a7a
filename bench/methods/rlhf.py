"""RLHF in two federated phases: a reward model on preference pairs, then policy optimisation.

Phase 1 (the first ``reward_rounds`` rounds) trains a reward model with the Bradley-Terry loss
``-log sigmoid(r(chosen) - r(rejected))`` (Ouyang et al. 2022). Phase 2 trains the policy, by default
with DPO (Rafailov et al. 2023: ``-log sigmoid(beta * (log-ratio(chosen) - log-ratio(rejected)))``,
log-ratios against the base model), or with ``policy_step: reward``: REINFORCE on the learned reward
with a KL penalty to the base model and a leave-one-out baseline over ``samples`` sampled responses
(RLOO, Ahmadian et al. 2024), a PPO-free stand-in for the PPO step of Ouyang et al.

Both phases run in the one round loop, so the reward model's updates and the policy's pass through
the same transport and defense hooks. One base model is in memory: the policy and the reward model
are two LoRA adapters on it (the reward model adds a scalar head on the last real token's final
hidden state, or with ``reward_model: likelihood`` scores the answer by its log-likelihood under its
adapter), and the reference model is the base with adapters disabled. The trainable state is
the union of both adapters and the head, so its flat layout is fixed across phases; in each phase
only that phase's parameters require gradients and are handed to the trainer (``named_trainable``),
so the other part's update is exactly zero.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from bench.api.config import doc
from bench.api.handles import ModelHandle, TaskSpec
from bench.api.method import Method
from bench.api.registry import METHODS
from bench.api.vocabulary import Record, TaskKind
from bench.methods._common import Wrapper, check_on_skeleton, freeze, seeded, sequence_logprobs
from bench.methods.lora import LoraSettings, apply_lora, lora_config, target_problem
from bench.methods.provider import replaces_training
from bench.scoring.score import Metric

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from bench.api.defense import Defense  # named in annotations only: transformers loads lazily
    from bench.world.tasks import Task

REWARD_ADAPTER, POLICY_ADAPTER = "reward", "default"
REWARD_POOLINGS = ("last", "mean")
REWARD_MODELS = ("head", "likelihood")


@dataclass(frozen=True, kw_only=True)
class RlhfSettings(LoraSettings):
    reward_rounds: int = doc("Rounds that train the reward model before the policy (0 = half the rounds, at least 1).", 0)
    policy_step: str = doc("'dpo' (default) or 'reward' (REINFORCE on the learned reward, KL-penalised).", "dpo")
    beta: float = doc("KL strength: DPO's beta, or the KL penalty of the reward-driven step.", 0.1)
    samples: int = doc("Responses sampled per prompt by the reward-driven step (leave-one-out baseline).", 2)
    max_new_tokens: int = doc("Tokens sampled per response by the reward-driven step.", 12)
    reward_pooling: str = doc(
        "What the reward head reads: 'last' (the last real token's final hidden state, as in Ouyang et al.) or "
        "'mean' (the mean final hidden state over the real tokens: a small model's last token attends to too "
        "little of the answer to compare it with the prompt).", "last")
    reward_model: str = doc(
        "'head' (a scalar head on a pooled hidden state, Ouyang et al. 2022) or 'likelihood' (the reward adapter's "
        "log-likelihood of the response, scaled by reward_beta, trained with the same Bradley-Terry loss: sequence "
        "likelihood calibration, Zhao et al. 2023). A preference rule that matches an answer's tokens to the prompt "
        "(this clinic for that symptom) is a product of context and token, which the language model's output layer "
        "computes and a linear head on a pooled state of the zoo's 4-layer model does not learn: held-out 0.53 with "
        "the head, 0.70 with the likelihood, trained centrally on 1,024 pairs (scenarios/studies/rlhf-reward-model.yaml).",
        "head")
    reward_beta: float = doc("Scale of the likelihood reward (reward_model: likelihood): r = reward_beta * log p(answer | prompt).", 0.1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.policy_step not in ("dpo", "reward"):
            raise ValueError("policy_step must be 'dpo' or 'reward'")
        if self.samples < 2 or self.reward_rounds < 0 or self.beta <= 0:
            raise ValueError("samples must be at least 2, reward_rounds non-negative and beta positive")
        if self.reward_pooling not in REWARD_POOLINGS:
            raise ValueError(f"reward_pooling must be one of {', '.join(REWARD_POOLINGS)}")
        if self.reward_model not in REWARD_MODELS or self.reward_beta <= 0:
            raise ValueError(f"reward_model must be one of {', '.join(REWARD_MODELS)} and reward_beta positive")


class RlhfModel(Wrapper):
    """The policy (LoRA adapter ``default``) answers; ``reward`` scores sequences with the other adapter."""

    def __init__(self, inner: nn.Module, reward_head: nn.Linear, pooling: str = "last",
                 likelihood_beta: float | None = None):
        super().__init__(inner)
        self.reward_head = reward_head
        self.pooling = pooling
        self.likelihood_beta = likelihood_beta  # None: the head scores; else reward = beta * log p(response)

    @contextlib.contextmanager
    def adapter(self, name: str) -> Iterator[None]:
        """The LoRA layers answer with adapter ``name`` inside the block."""
        with self._layers_set("_active_adapter", [name]):
            yield

    @contextlib.contextmanager
    def base_only(self) -> Iterator[None]:
        """The base model alone (every adapter off) inside the block: the reference model."""
        with self._layers_set("_disable_adapters", True):
            yield

    @contextlib.contextmanager
    def _layers_set(self, attribute: str, value: object) -> Iterator[None]:
        # Set on peft's LoRA layers directly: peft's set_adapter / disable_adapter also flip requires_grad,
        # which the phase decides (on_round_start) and which batched training (vmap) may not touch.
        from peft.tuners.tuners_utils import BaseTunerLayer  # peft loads with the model, not with the registry

        layers = [m for m in self.inner.modules() if isinstance(m, BaseTunerLayer)]
        before = [getattr(layer, attribute) for layer in layers]
        for layer in layers:
            setattr(layer, attribute, value)
        try:
            yield
        finally:
            for layer, old in zip(layers, before):
                setattr(layer, attribute, old)

    def reward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One scalar per sequence; ``labels`` marks the response tokens (-100 elsewhere), which the
        likelihood reward sums over and the head ignores."""
        if self.likelihood_beta is not None:
            with self.adapter(REWARD_ADAPTER):
                return self.likelihood_beta * sequence_logprobs(self.inner, input_ids, attention_mask, labels)
        with self.adapter(REWARD_ADAPTER):
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[-1]
        if self.pooling == "mean":
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        else:
            last_real = attention_mask.sum(dim=1) - 1  # right padding
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_real]
        return self.reward_head(pooled.to(self.reward_head.weight.dtype)).squeeze(-1)  # float32 head under bf16

    def logprobs(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, reference: bool = False) -> torch.Tensor:
        if not reference:
            return sequence_logprobs(self.inner, ids, mask, labels)
        with torch.no_grad(), self.base_only():
            return sequence_logprobs(self.inner, ids, mask, labels)


def _pair(batch: dict[str, torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    prefix = "rejected_" if side == "rejected" else ""
    return batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], batch[f"{prefix}labels"]


@METHODS.register("rlhf")
class Rlhf(Method):
    """Federated reward model, then federated policy optimisation (DPO by default), both as LoRA adapters."""

    Config = RlhfSettings
    task_kinds = frozenset({TaskKind.PREFERENCE})
    phased = True
    batchable = True

    def batching_problem(self) -> str | None:
        if self.config.policy_step == "reward":  # it samples responses from its own generator inside the loss
            return "method rlhf samples responses in its loss (policy_step: reward)"
        return super().batching_problem()

    def check_model(self, architecture: PretrainedConfig | None, task_kind: str) -> str | None:
        return check_on_skeleton(architecture, task_kind, lambda model: target_problem(model, self.config))

    def build(self, model: nn.Module, task: Task, rng: torch.Generator) -> nn.Module:
        freeze(model)
        peft_model = apply_lora(model, self.config, task, rng)
        with seeded(rng):
            peft_model.add_adapter(REWARD_ADAPTER, lora_config(model, self.config, task))
            head = nn.Linear(model.config.hidden_size, 1).to(next(model.parameters()).device)
        wrapped = RlhfModel(peft_model, head, self.config.reward_pooling,
                            self.config.reward_beta if self.config.reward_model == "likelihood" else None)
        self._reward_names, self._policy_names = set(), set()
        head_trains = self.config.reward_model == "head"  # the likelihood reward leaves the head out of the state
        for name, p in wrapped.named_parameters():
            if name.startswith("reward_head") and not head_trains:
                p.requires_grad_(False)
                continue
            part = self._reward_names if (f".{REWARD_ADAPTER}." in name or name.startswith("reward_head")) else (
                self._policy_names if ".lora_" in name else None)
            if part is not None:
                part.add(name)
                p.requires_grad_(True)
        self._sampling = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=rng)))
        self.phase = "reward"
        self._scores = _Scores()  # evaluation scores by weights digest (extra_utility)
        return wrapped

    # --- phases ----------------------------------------------------------------------------------
    def reward_rounds(self, rounds: int) -> int:
        return self.config.reward_rounds or max(1, rounds // 2)

    def on_round_start(self, round_index: int, rounds: int) -> None:
        self.phase = "reward" if round_index < self.reward_rounds(rounds) else "policy"
        active = self._active_names()
        for name, p in self._named:
            p.requires_grad_(name in active)

    @property
    def sequences_per_example(self) -> int:
        """Both phases put 2 sequences per pair through the model (chosen and rejected; DPO's reference
        pass has no gradient); the reward-driven policy step puts its ``samples`` sampled responses."""
        return self.config.samples if self._samples_responses else 2

    @property
    def last_token_is_label(self) -> bool:
        """The head reward model reads the last real token's hidden state: there every token is an input
        (the likelihood reward, like the policy, predicts each token from the ones before)."""
        return self.phase != "reward" or self.config.reward_model == "likelihood"

    def trained_sequences(self, batch: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Both answers of each pair (the sampled responses of the reward-driven step are not client data)."""
        return [_pair(batch, "chosen")[:2]] + ([] if self._samples_responses else [_pair(batch, "rejected")[:2]])

    @property
    def _samples_responses(self) -> bool:
        return self.phase == "policy" and self.config.policy_step == "reward"

    def _active_names(self) -> set[str]:
        return self._reward_names if self.phase == "reward" else self._policy_names

    @property
    def named_trainable(self) -> list[tuple[str, nn.Parameter]]:
        """The current phase's parameters (what local training optimises, and what DP-SGD clips);
        the flat state (``get_flat``/``set_flat``/``unflatten``) always spans both phases."""
        active = self._active_names()
        return [(n, p) for n, p in self._named if n in active]

    def check_compatible(self, defenses: list[Defense]) -> str | None:
        if self.config.policy_step == "reward":
            for defense in defenses:
                if replaces_training(defense):
                    return (f"{defense.name} clips per-example gradients, but the reward-driven policy step "
                            "trains on several sampled responses per example; use policy_step: dpo")
        return None

    def example_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        losses: dict[str, Callable[[RlhfModel, dict[str, torch.Tensor]], torch.Tensor]] = {
            "reward": self.reward_losses, "policy": self.dpo_losses if self.config.policy_step == "dpo" else self.rloo_losses}
        return losses[self.phase](model, batch)

    # --- losses ----------------------------------------------------------------------------------
    def reward_margins(self, model: RlhfModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.reward(*_pair(batch, "chosen")) - model.reward(*_pair(batch, "rejected"))

    def reward_losses(self, model: RlhfModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return -F.logsigmoid(self.reward_margins(model, batch))

    def implicit_margins(self, model: RlhfModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """beta * (log-ratio(chosen) - log-ratio(rejected)), the DPO policy's implicit reward margin."""
        ratios = []
        for side in ("chosen", "rejected"):
            ids, mask, labels = _pair(batch, side)
            ratios.append(model.logprobs(ids, mask, labels) - model.logprobs(ids, mask, labels, reference=True))
        return self.config.beta * (ratios[0] - ratios[1])

    def dpo_losses(self, model: RlhfModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return -F.logsigmoid(self.implicit_margins(model, batch))

    def rloo_losses(self, model: RlhfModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask, labels = _pair(batch, "chosen")
        has_response = (labels != -100).any(dim=1)
        first_response = (labels != -100).int().argmax(dim=1)
        prompt_lengths = torch.where(has_response, first_response, mask.sum(dim=1)).clamp(min=1).tolist()
        losses = []
        for row, length in enumerate(prompt_lengths):
            sampled, sampled_labels = self._sample(model, ids[row : row + 1, :length])
            ones = torch.ones_like(sampled)
            logp = model.logprobs(sampled, ones, sampled_labels)
            with torch.no_grad():
                score = model.reward(sampled, ones, sampled_labels) - self.config.beta * (
                    logp.detach() - model.logprobs(sampled, ones, sampled_labels, reference=True))
                baseline = (score.sum() - score) / (len(score) - 1)  # leave-one-out
            losses.append(-((score - baseline) * logp).mean())
        return torch.stack(losses)

    @torch.no_grad()
    def _sample(self, model: RlhfModel, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``samples`` responses to one prompt from the policy, from the method's own generator."""
        ids = prompt.expand(self.config.samples, -1)
        for _ in range(self.config.max_new_tokens):
            logits = model.inner(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].float()
            step = torch.multinomial(torch.softmax(logits, -1).cpu(), 1, generator=self._sampling).to(ids.device)
            ids = torch.cat([ids, step], dim=1)
        labels = ids.clone()
        labels[:, : prompt.shape[1]] = -100
        eos = model.config.eos_token_id
        after_eos = (torch.cumsum((ids == eos).int(), dim=1) - (ids == eos).int()) > 0  # tokens after the first eos
        labels[after_eos] = -100
        return ids, labels

    # --- utility ---------------------------------------------------------------------------------
    @torch.no_grad()
    def extra_utility(self, handle: ModelHandle, task: TaskSpec, test: list[Record]) -> list[Metric]:
        """Reward accuracy and the DPO policy's implicit margin on ``test``. Each of the three scorings
        (reward model, policy, reference) is kept with a digest of the weights it reads: a learning curve
        evaluates after every round, and in a reward round the policy and the reference have not moved
        (nor the reward model in a policy round), so their scores are taken from the last evaluation
        instead of recomputed; the same weights on the same batches give the same numbers."""
        model = self.model
        model.eval()
        batches: list[dict[str, torch.Tensor]] = []

        def collated() -> list[dict[str, torch.Tensor]]:
            if not batches:
                batches.extend(task.collate(test[s : s + 16], handle.tokenizer, handle.device) for s in range(0, len(test), 16))
            return batches

        def logprobs(reference: bool) -> torch.Tensor:  # (2, examples): chosen, rejected
            return torch.stack([torch.cat([model.logprobs(*_pair(b, side), reference=reference) for b in collated()])
                                for side in ("chosen", "rejected")])

        digests = {name: _digest(p) for name, p in model.named_parameters()}
        of = lambda *left_out: _combined(digests, set().union(*left_out))  # noqa: E731
        records = _fingerprint(test)
        rewards = self._scores.get(("reward", records, of(self._policy_names)),
                                   lambda: torch.cat([self.reward_margins(model, b) for b in collated()]))
        policy = self._scores.get(("policy", records, of(self._reward_names)), lambda: logprobs(False))
        reference = self._scores.get(("reference", records, of(self._reward_names, self._policy_names)),
                                     lambda: logprobs(True))
        ratios = policy - reference
        margin_all = (self.config.beta * (ratios[0] - ratios[1])).float()
        correct_all = (rewards > 0).float()
        return [Metric("utility.reward_accuracy", float(correct_all.mean())),
                Metric("utility.implicit_reward_margin", float(margin_all.mean())),
                Metric("utility.implicit_reward_accuracy", float((margin_all > 0).float().mean()))]


class _Scores:
    """The latest few evaluation scores, by (what was scored, on which records, with which weights)."""

    KEEP = 6

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str, str], torch.Tensor] = {}

    def get(self, key: tuple[str, str, str], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in self._kept:
            self._kept[key] = compute()
            while len(self._kept) > self.KEEP:
                del self._kept[next(iter(self._kept))]
        return self._kept[key]


def _digest(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.blake2b(flat.view(torch.uint8).numpy().tobytes() + str(flat.dtype).encode(), digest_size=16).digest()


def _combined(digests: dict[str, bytes], left_out: set[str]) -> str:
    """One digest of every parameter but ``left_out`` (those the scoring does not read)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(digests):
        if name not in left_out:
            h.update(name.encode() + digests[name])
    return h.hexdigest()


def _fingerprint(records: list[Record]) -> str:
    return hashlib.blake2b(json.dumps(records, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()
