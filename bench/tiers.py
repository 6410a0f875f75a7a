"""Openness tiers: what each grants, and the handles through which the model is reached.

Open tiers hand out an ``OpenModel`` (weights, gradients, logits, text). Gray- and black-box tiers
hand out a ``ProviderAPI``: the provider hosts the model, logs every request (the ``provider``
vantage) and refuses what the tier does not grant with ``TierAccessError``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bench.errors import TierAccessError
from bench.registry import TIERS
from bench.transcript import ProviderRecord


class Access(enum.Enum):
    WEIGHTS = "weights"
    GRADIENTS = "gradients"
    LOGITS = "logits"
    TEXT = "text"
    PROVIDER_TUNING = "provider-tuning"
    TRAINING_DATA = "training-data"


class Tier:
    name: ClassVar[str]
    grants: ClassVar[frozenset[Access]]
    hosted: ClassVar[bool] = False
    """True when a provider hosts the model (clients never hold weights)."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        pass

    def __init__(self, config: Any = None):
        self.config = config

    def grants_weights(self) -> bool:
        return Access.WEIGHTS in self.grants

    def missing(self, needs: frozenset[Access]) -> list[Access]:
        return sorted((a for a in needs if a not in self.grants), key=lambda a: a.value)

    def public_corpus(self, model_source: Any) -> list[str] | None:
        """The base model's pretraining data where this tier publishes it (open-source), else None:
        knowledge an attacker (reference models) or a defender (public pretraining for DP) may use."""
        if Access.TRAINING_DATA not in self.grants:
            return None
        return model_source.pretraining_corpus()

    def handle(self, model: nn.Module, method: Any, task: Any, tokenizer: Any, log: list[ProviderRecord]) -> Any:
        if self.hosted:
            return ProviderAPI(OpenModel(model, method, task, tokenizer), self.grants, log)
        return OpenModel(model, method, task, tokenizer)


@TIERS.register("open-source")
class OpenSource(Tier):
    """Weights, architecture, code and the pretraining corpus."""

    grants = frozenset({Access.WEIGHTS, Access.GRADIENTS, Access.LOGITS, Access.TEXT, Access.TRAINING_DATA})


@TIERS.register("open-weight")
class OpenWeight(Tier):
    """Weights and architecture; the training data stays with the model's maker."""

    grants = frozenset({Access.WEIGHTS, Access.GRADIENTS, Access.LOGITS, Access.TEXT})


@TIERS.register("gray-box")
class GrayBox(Tier):
    """A provider hosts the model: clients get logits and a provider-side tuning endpoint."""

    grants = frozenset({Access.LOGITS, Access.TEXT, Access.PROVIDER_TUNING})
    hosted = True


@TIERS.register("black-box")
class BlackBox(Tier):
    """A provider returns generated text only."""

    grants = frozenset({Access.TEXT})
    hosted = True


def record_egress(transcript: Any, texts: list[str]) -> None:
    """Client-side accounting of raw client text that left the client (``privacy.egress_*``)."""
    transcript.egress_records += len(texts)
    transcript.egress_bytes += sum(len(t.encode("utf-8")) for t in texts)


class OpenModel:
    """Full access to a model held in this process."""

    def __init__(self, model: nn.Module, method: Any, task: Any, tokenizer: Any, batch_size: int = 32):
        self.model, self.method, self.task, self.tokenizer = model, method, task, tokenizer
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def module(self) -> nn.Module:
        """The model itself (gradients, hidden states): open tiers only."""
        return self.model

    def hidden_states(self, examples: list[dict]) -> list[torch.Tensor]:
        """Last-layer hidden states of each batch, shape (batch, length, width)."""
        self.model.eval()
        with torch.no_grad():
            return [self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
                    .hidden_states[-1].float().cpu() for b in self._batches(examples)]

    def gradients(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Gradient of the mean task loss of ``examples`` with respect to every trainable parameter."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.model.eval()
        losses = torch.cat([self.task.example_losses(self.model, b) for b in self._batches(examples)])
        grads = torch.autograd.grad(losses.mean(), [p for _, p in named], allow_unused=True)
        return {n: (g.detach().cpu() if g is not None else torch.zeros_like(p).cpu()) for (n, p), g in zip(named, grads)}

    def _batches(self, examples: list[dict]):
        for start in range(0, len(examples), self.batch_size):
            yield self.task.collate(examples[start : start + self.batch_size], self.tokenizer, self.device)

    @torch.no_grad()
    def example_losses(self, examples: list[dict]) -> torch.Tensor:
        """The task loss of each example (classification: cross-entropy; text: mean token NLL)."""
        self.model.eval()
        return torch.cat([self.task.example_losses(self.model, b).float().cpu() for b in self._batches(examples)])

    @torch.no_grad()
    def class_logits(self, examples: list[dict]) -> torch.Tensor:
        self.model.eval()
        return torch.cat([self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float().cpu()
                          for b in self._batches(examples)])

    @torch.no_grad()
    def token_logits(self, examples: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per example: (logits over the vocabulary at each scored position, the true next tokens)."""
        self.model.eval()
        out = []
        for b in self._batches(examples):
            logits = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
            shifted, targets = logits[:, :-1], b["labels"][:, 1:]
            for row in range(targets.shape[0]):
                keep = targets[row] != -100
                out.append((shifted[row][keep].cpu(), targets[row][keep].cpu()))
        return out

    @torch.no_grad()
    def predict_labels(self, examples: list[dict]) -> torch.Tensor:
        return self.class_logits(examples).argmax(dim=-1)

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
        self.model.eval()
        texts = []
        room = prompt_room(self.model, max_new_tokens)
        for prompt in prompts:
            ids = self.tokenizer(prompt, return_tensors="pt").input_ids[:, -room:].to(self.device)
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
            texts.append(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        return texts


def prompt_room(model: nn.Module, max_new_tokens: int) -> int:
    """Prompt tokens that fit before generation runs past the model's positions (long prompts keep
    their end, where the instruction template asks for the response). Methods that prepend their own
    positions (soft prompts, prefixes, textual prompts) declare them as ``extra_positions``."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 1_000_000
    return max(1, limit - max_new_tokens - int(getattr(model, "extra_positions", 0)))


class ProviderAPI:
    """A hosted model: every request is logged by the provider; ungranted access raises."""

    def __init__(self, inner: OpenModel, grants: frozenset[Access], log: list[ProviderRecord], client: int | None = None):
        self._inner, self._grants, self.log, self.client = inner, grants, log, client

    @property
    def task(self) -> Any:
        """The task's public definition (record format), not its data."""
        return self._inner.task

    def for_client(self, client: int | None) -> ProviderAPI:
        return ProviderAPI(self._inner, self._grants, self.log, client)

    def _require(self, access: Access, what: str) -> None:
        if access not in self._grants:
            raise TierAccessError(f"{what} needs {access.value} access, which this tier does not grant")

    def _record(self, examples: list[dict], purpose: str) -> None:
        for example in examples:
            self.log.append(ProviderRecord(client=self.client, purpose=purpose, text=self._inner.task.text_of(example)))

    def weights(self):
        raise TierAccessError("the provider hosts the model: weights are not available at this tier")

    def module(self):
        raise TierAccessError("the provider hosts the model: gradients and hidden states are not available at this tier")

    def hidden_states(self, examples: list[dict]):
        raise TierAccessError("the provider hosts the model: hidden states are not available at this tier")

    def gradients(self, examples: list[dict]):
        raise TierAccessError("the provider hosts the model: gradients are not available at this tier")

    def upload_for_tuning(self, examples: list[dict]) -> None:
        """The tuning endpoint's upload: the provider receives (and logs) every training example."""
        self._require(Access.PROVIDER_TUNING, "provider-side tuning")
        self._record(examples, "tuning-upload")

    def tune(self, job: Any, trainer: Any) -> dict[str, float]:
        """Provider-side tuning: the client uploads ``job.examples``; the provider runs ``trainer`` on its
        own copy of the model (the adapter it trains stays behind this API)."""
        self.upload_for_tuning(job.examples)
        return trainer(job)

    def example_losses(self, examples: list[dict]) -> torch.Tensor:
        self._require(Access.LOGITS, "a loss")
        self._record(examples, "inference")
        return self._inner.example_losses(examples)

    def class_logits(self, examples: list[dict]) -> torch.Tensor:
        self._require(Access.LOGITS, "logits")
        self._record(examples, "inference")
        return self._inner.class_logits(examples)

    def token_logits(self, examples: list[dict]):
        self._require(Access.LOGITS, "logits")
        self._record(examples, "inference")
        return self._inner.token_logits(examples)

    def predict_labels(self, examples: list[dict]) -> torch.Tensor:
        self._require(Access.TEXT, "a label")
        self._record(examples, "inference")
        return self._inner.predict_labels(examples)

    def generate(self, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
        self._require(Access.TEXT, "text generation")
        for prompt in prompts:
            self.log.append(ProviderRecord(client=self.client, purpose="inference", text=prompt))
        return self._inner.generate(prompts, max_new_tokens)
