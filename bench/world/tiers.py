"""Openness tiers: what each grants, and the handles through which the model is reached.

Open tiers hand out an ``OpenModel`` (weights, gradients, logits, text). Gray- and black-box tiers
hand out a ``ProviderAPI``: the provider hosts the model, logs every request (the ``provider``
vantage) and refuses what the tier does not grant with ``TierAccessError``.

The boundary is structural, not a convention: a ``ProviderAPI`` has no ``__dict__`` and no attribute
that leads to the hosted model or to the request log. Both live in this module's private registry
``_HOSTED``, keyed by an opaque number that the API object holds (an attacker is in-process code and
could import the registry; the point is that nothing handed to an attack reaches it).
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import torch
from torch import nn

from bench.api.access import Access
from bench.api.errors import TierAccessError
from bench.api.layout import ParameterLayout
from bench.api.registry import TIERS
from bench.api.transcript import ProviderRecord
from bench.api.vocabulary import Record

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import PreTrainedTokenizerBase

    from bench.api.transcript import Transcript
    from bench.world.models import ModelSource
    from bench.world.tasks import Task


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

    def public_corpus(self, model_source: ModelSource) -> list[str] | None:
        """The base model's pretraining data where this tier publishes it (open-source), else None:
        knowledge an attacker (reference models) or a defender (public pretraining for DP) may use."""
        if Access.TRAINING_DATA not in self.grants:
            return None
        return model_source.pretraining_corpus()

    def handle(self, model: nn.Module, layout: ParameterLayout | None, task: Task, tokenizer: PreTrainedTokenizerBase,
               log: list[ProviderRecord]) -> OpenModel | ProviderAPI:
        """``layout``: the trainable state's names and shapes (open tiers load flat states with it)."""
        if self.hosted:
            return ProviderAPI(OpenModel(model, layout, task, tokenizer), self.grants, log)
        return OpenModel(model, layout, task, tokenizer)


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



class TuningJob(Protocol):
    """What a provider's tuning endpoint reads of a client's job (``bench.client.training.LocalJob``)."""

    @property
    def examples(self) -> list[Record]: ...


J = TypeVar("J", bound=TuningJob)

def record_egress(transcript: Transcript, texts: list[str]) -> None:
    """Client-side accounting of raw client text that left the client (``privacy.egress_*``)."""
    transcript.egress_records += len(texts)
    transcript.egress_bytes += sum(len(t.encode("utf-8")) for t in texts)


GENERATION_BATCH = 16
"""Prompts generated together (one padded batch); a prompt at a time spent most of an evaluation's time."""


class OpenModel:
    """Full access to a model held in this process.

    With a ``layout`` (the trainable state's names and shapes) it also reads and loads flat
    trainable states (``get_flat``, ``set_flat``, ``at_state``, ``loss_at``): what white-box attacks
    need of the post-training method, without the live method object."""

    def __init__(self, model: nn.Module, layout: ParameterLayout | None, task: Task, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32):
        self.model, self.layout, self.task, self.tokenizer = model, layout, task, tokenizer
        self.batch_size = batch_size

    # --- the trainable state, as flat vectors ----------------------------------------------------
    def _parameters(self) -> list[tuple[str, nn.Parameter]]:
        if self.layout is None:
            raise TierAccessError("this handle has no trainable-state layout")
        found = dict(self.model.named_parameters())
        return [(name, found[name]) for name in self.layout.names]

    @property
    def named_trainable(self) -> list[tuple[str, nn.Parameter]]:
        """The layout's parameters that train now (a multi-phase method trains part of its state)."""
        return [(n, p) for n, p in self._parameters() if p.requires_grad]

    @property
    def num_trainable(self) -> int:
        return self.layout.num_trainable if self.layout is not None else 0

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.layout is None:
            raise TierAccessError("this handle has no trainable-state layout")
        return self.layout.unflatten(flat)

    def get_flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).float() for _, p in self._parameters()])

    def set_flat(self, flat: torch.Tensor) -> None:
        with torch.no_grad():
            named = self.layout.unflatten(flat)
            for name, p in self._parameters():
                p.copy_(named[name].to(p.device, p.dtype))

    @contextlib.contextmanager
    def at_state(self, flat: torch.Tensor) -> Iterator[nn.Module]:
        """The model with trainable state ``flat``, in eval mode; the state and mode restored on exit."""
        saved, was_training = self.get_flat(), self.model.training
        try:
            self.set_flat(flat.to(saved.device))
            self.model.eval()
            yield self.model
        finally:
            self.set_flat(saved)
            self.model.train(was_training)

    @torch.no_grad()
    def loss_at(self, state: torch.Tensor, examples: list[dict]) -> torch.Tensor:
        """The task loss of each example with the trainable state set to ``state`` (restored after)."""
        with self.at_state(state):
            return self.example_losses(examples)

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
        """Greedy continuations, ``GENERATION_BATCH`` prompts per ``generate`` call (left-padded, masked:
        the same tokens as a prompt at a time, ``tests/test_methods.py``), unless the model declares
        ``generates_batched = False`` (its pads would move its positions)."""
        batch = GENERATION_BATCH if getattr(self.model, "generates_batched", True) else 1
        return self._generate(prompts, max_new_tokens, batch)

    @torch.no_grad()
    def generate_one_by_one(self, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
        """``generate`` a prompt at a time, unpadded: the oracle the batched path is tested against."""
        return self._generate(prompts, max_new_tokens, 1)

    def _generate(self, prompts: list[str], max_new_tokens: int, batch: int) -> list[str]:
        self.model.eval()
        room = prompt_room(self.model, max_new_tokens)
        encoded = [self.tokenizer(prompt, return_tensors="pt").input_ids[0, -room:] for prompt in prompts]
        texts = []
        for start in range(0, len(encoded), batch):
            texts += self._generate_batch(encoded[start : start + batch], max_new_tokens)
        return texts

    def _generate_batch(self, encoded: list[torch.Tensor], max_new_tokens: int) -> list[str]:
        """One ``generate`` call; rows shorter than the longest are left-padded and masked (none at one row)."""
        width = max(len(ids) for ids in encoded)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, one in enumerate(encoded):  # left padding: every row's next token is at the end
            ids[row, width - len(one):], mask[row, width - len(one):] = one, 1
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                  max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        return [self.tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]


def prompt_room(model: nn.Module, max_new_tokens: int) -> int:
    """Prompt tokens that fit before generation runs past the model's positions (long prompts keep
    their end, where the instruction template asks for the response). Methods that prepend their own
    positions (soft prompts, prefixes, textual prompts) declare them as ``extra_positions``."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 1_000_000
    return max(1, limit - max_new_tokens - int(getattr(model, "extra_positions", 0)))


_HOSTED: dict[int, _Hosted] = {}
"""Opaque key -> what a provider keeps behind its API (the model and its request log)."""
_KEYS = itertools.count()


class _Hosted:
    """The provider's side: the hosted model (or a loader that builds it on first use) and its log."""

    __slots__ = ("_inner", "log")

    def __init__(self, inner: OpenModel | Callable[[], OpenModel], log: list[ProviderRecord]):
        self._inner, self.log = inner, log

    def inner(self) -> OpenModel:
        if not isinstance(self._inner, OpenModel):
            self._inner = self._inner()
        return self._inner


class ProviderAPI:
    """A hosted model: every request is logged by the provider; ungranted access raises.

    ``inner`` is the hosted model, or a zero-argument callable that loads it when first queried.
    The object holds only an opaque key, the grants and the client id (``__slots__``, no
    ``__dict__``): neither the model nor the request log is reachable from it."""

    __slots__ = ("_key", "_grants", "client", "__weakref__")

    def __init__(self, inner: OpenModel | Callable[[], OpenModel], grants: frozenset[Access],
                 log: list[ProviderRecord], client: int | None = None):
        self._attach(_Hosted(inner, log), grants, client)

    def _attach(self, hosted: _Hosted, grants: frozenset[Access], client: int | None) -> None:
        self._key, self._grants, self.client = next(_KEYS), frozenset(grants), client
        _HOSTED[self._key] = hosted
        weakref.finalize(self, _HOSTED.pop, self._key, None)

    def _hosted(self) -> _Hosted:
        return _HOSTED[self._key]

    def __reduce__(self):
        raise TypeError("a provider API cannot be copied or pickled")

    @property
    def task(self) -> Task:
        """The task's public definition (record format), not its data."""
        return self._hosted().inner().task

    def for_client(self, client: int | None) -> ProviderAPI:
        api = object.__new__(ProviderAPI)
        api._attach(self._hosted(), self._grants, client)
        return api

    def _require(self, access: Access, what: str) -> None:
        if access not in self._grants:
            raise TierAccessError(f"{what} needs {access.value} access, which this tier does not grant")

    def _record(self, examples: list[dict], purpose: str) -> None:
        hosted = self._hosted()
        task = hosted.inner().task
        for example in examples:
            hosted.log.append(ProviderRecord(client=self.client, purpose=purpose, text=task.text_of(example)))

    def weights(self):
        raise TierAccessError("the provider hosts the model: weights are not available at this tier")

    def module(self):
        raise TierAccessError("the provider hosts the model: gradients and hidden states are not available at this tier")

    def hidden_states(self, examples: list[dict]):
        raise TierAccessError("the provider hosts the model: hidden states are not available at this tier")

    def gradients(self, examples: list[dict]):
        raise TierAccessError("the provider hosts the model: gradients are not available at this tier")

    def loss_at(self, state: torch.Tensor, examples: list[dict]):
        raise TierAccessError("the provider hosts the model: it does not load a client's trainable state (weights)")

    def upload_for_tuning(self, examples: list[dict]) -> None:
        """The tuning endpoint's upload: the provider receives (and logs) every training example."""
        self._require(Access.PROVIDER_TUNING, "provider-side tuning")
        self._record(examples, "tuning-upload")

    def tune(self, job: J, trainer: Callable[[J], dict[str, float]]) -> dict[str, float]:
        """Provider-side tuning: the client uploads ``job.examples``; the provider runs ``trainer`` on its
        own copy of the model (the adapter it trains stays behind this API)."""
        self.upload_for_tuning(job.examples)
        return trainer(job)

    def example_losses(self, examples: list[dict]) -> torch.Tensor:
        self._require(Access.LOGITS, "a loss")
        self._record(examples, "inference")
        return self._hosted().inner().example_losses(examples)

    def class_logits(self, examples: list[dict]) -> torch.Tensor:
        self._require(Access.LOGITS, "logits")
        self._record(examples, "inference")
        return self._hosted().inner().class_logits(examples)

    def token_logits(self, examples: list[dict]):
        self._require(Access.LOGITS, "logits")
        self._record(examples, "inference")
        return self._hosted().inner().token_logits(examples)

    def predict_labels(self, examples: list[dict]) -> torch.Tensor:
        self._require(Access.TEXT, "a label")
        self._record(examples, "inference")
        return self._hosted().inner().predict_labels(examples)

    def generate(self, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
        self._require(Access.TEXT, "text generation")
        hosted = self._hosted()
        for prompt in prompts:
            hosted.log.append(ProviderRecord(client=self.client, purpose="inference", text=prompt))
        return hosted.inner().generate(prompts, max_new_tokens)
