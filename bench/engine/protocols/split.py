"""Split-FedLLM (SplitFed V1, Thapa et al. 2022): clients run the bottom layers, the server the rest.

The client side is the embedding plus the first ``federation.cut_layer`` transformer blocks; the server
side is the remaining blocks, the final norm and the head. In each local step the client runs its
part, sends the activations at the cut (with the attention mask and the labels the server-side loss
needs), the server runs its part and the loss, and answers with the activations' gradient, through
which the client finishes the backward pass. The computation is genuinely cut: the server's graph
starts at a fresh leaf holding the activations, and the client's backward is a separate call that
starts from the gradient the server returned (``CutPoint``), so any difference from ordinary training
would show. Each round both sides are averaged over the clients (the fed server averages the client
parts, the main server its per-client copies), weighted by example count, as FedAvg averages.

Costs: up = activations (+ mask and labels) per step + the client-side part of the update; down = the
activations' gradients per step + the client-side part of the global state. Tied embeddings (GPT-2's
head is its input embedding) keep their server-side gradient in the simulation; a deployment would
send it down as well (or untie), which the byte count does not include.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import Cache

from bench.api.cut import blocks_of, cut_module
from bench.api.method import Method
from bench.api.protocol import Channel, Message, Protocol, RoundContext
from bench.api.registry import PROTOCOLS
from bench.api.seeding import generator
from bench.api.transcript import ChannelValue
from bench.client.training import LocalJob, job_rng, make_optimizer

HookOutput: TypeAlias = torch.Tensor | tuple[torch.Tensor, ...]
"""What a transformer block's forward returns (hidden states, or a tuple starting with them)."""


def client_side(model: nn.Module, cut: int) -> set[int]:
    """ids of the parameters on the client side: the embeddings and the first ``cut`` blocks."""
    blocks = blocks_of(model)
    ids = {id(p) for block in list(blocks)[:cut] for p in block.parameters()}
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            ids |= {id(p) for p in module.parameters()}
    return ids


@dataclass
class CutPoint:
    """While active, the model's forward is cut after ``module``: the server part starts from a detached
    leaf holding the (noised) activations; when the server's backward reaches that leaf, its gradient
    is sent back and the client part's backward runs from it."""

    module: nn.Module
    channel: Callable[[torch.Tensor], torch.Tensor] | None = None
    """``(activations) -> activations``: the client's channel defenses, applied before sending."""
    sent: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)
    returned: list[torch.Tensor] = field(default_factory=list)
    mask: torch.Tensor | None = None

    def __enter__(self) -> CutPoint:
        self._handle = self.module.register_forward_hook(self._cut)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def _cut(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: HookOutput) -> HookOutput:
        hidden = output[0] if isinstance(output, tuple) else output
        if not torch.is_grad_enabled():
            return output
        outgoing = hidden.detach()
        if self.channel is not None:
            outgoing = self.channel(outgoing)
        leaf = outgoing.clone().requires_grad_(True)  # the server's graph starts here
        self.sent.append(outgoing.clone())

        def answer(grad: torch.Tensor) -> None:
            self.returned.append(grad.detach().clone())
            if hidden.requires_grad:  # the client finishes the backward from the returned gradient
                torch.autograd.backward(hidden, grad)

        leaf.register_hook(answer)
        return (leaf, *output[1:]) if isinstance(output, tuple) else leaf


@dataclass
class SplitMessage:
    """What one client exchanged with the server in a round."""

    activations: list[torch.Tensor]
    """Per local step, the (batch, positions, hidden) activations the server received."""
    masks: list[torch.Tensor]
    """Per local step, the attention mask sent with them (the server-side blocks need it)."""
    gradients: list[torch.Tensor]
    """Per local step, the activations' gradient the server sent back."""
    update: torch.Tensor
    """The whole trainable state's change (client part to the fed server, server part kept there)."""
    client_numel: int
    """Trainable values on the client side (the part that crosses the wire for averaging)."""
    label_numel: int
    labels: list[torch.Tensor]
    """Per local step, the labels sent with the activations (the server-side head's loss needs them): in the
    clear, so the server reads every training label, and under a language task those are the tokens."""
    trained_on: list[list[int]]
    """The token sequences the client trained on (ground truth; never in the transcript)."""


@PROTOCOLS.register("split")
class SplitLearning(Protocol):
    """SplitFed V1: cut after ``cut_layer`` blocks; both sides averaged every round."""

    channel = Channel.ACTIVATIONS
    shares_parameters = False

    def label(self) -> str:
        return f"split (cut {self.settings.cut_layer})"  # leakage and costs change with the cut depth

    def setup(self, fed: RoundContext) -> None:
        model = fed.method.model
        self.cut = self.settings.cut_layer
        cut_module(model, self.cut)  # fails before training when the model has fewer blocks
        on_client = client_side(model, self.cut)
        trainable = [p for _, p in fed.method.named_trainable]
        self.client_mask = torch.cat([torch.full((p.numel(),), id(p) in on_client) for p in trainable])
        self.client_numel = int(self.client_mask.sum())
        self._method = fed.method
        self._round_start: tuple[int, torch.Tensor] | None = None

    def client_message(self, fed: RoundContext, round_index: int, client: int, global_state: torch.Tensor) -> SplitMessage:
        s, method = self.settings, fed.method
        method.set_flat(global_state)
        self._round_start = (round_index, global_state)
        job = LocalJob(model=method.model, parameters=[p for _, p in method.named_trainable],
                       examples=fed.clients[client].members, collate=fed.collate, example_losses=method.example_losses,
                       steps=s.local_steps, batch_size=s.batch_size, lr=s.lr, optimizer=s.optimizer,
                       rng=generator(*fed.seed_parts, "client", round_index, client), client=client)
        trainer = fed.trainer
        for defense in fed.defenses:
            trainer = defense.wrap_training(trainer, client, job.rng)
        rng = generator(*fed.seed_parts, "channel", round_index, client)

        def channel(activations: torch.Tensor) -> torch.Tensor:
            for defense in fed.defenses:
                activations = defense.on_channel(round_index, client, activations, rng)
            return activations

        cut = CutPoint(cut_module(method.model, self.cut), channel=channel)
        with cut, job_rng(job):
            trainer(job)
        batches = [fed.collate([job.examples[i] for i in step]) for step in job.seen]
        masks = [b["attention_mask"].detach().cpu() for b in batches]
        once = list(dict.fromkeys(i for step in job.seen for i in step))  # as the engine records FedAvg's
        whole = fed.collate([job.examples[i] for i in once])
        trained = [row[m.bool()].tolist() for row, m in zip(whole["input_ids"].cpu(), whole["attention_mask"].cpu())]
        return SplitMessage(activations=[a.detach().cpu() for a in cut.sent], masks=masks,
                            gradients=[g.cpu() for g in cut.returned], update=method.get_flat() - global_state,
                            client_numel=self.client_numel, label_numel=sum(int(b["labels"].numel()) for b in batches),
                            labels=[b["labels"].detach().cpu() for b in batches],
                            trained_on=trained)

    def combine(self, fed: RoundContext, round_index: int, messages: dict[int, SplitMessage], weights: dict[int, float],
                global_state: torch.Tensor) -> torch.Tensor:
        total = sum(weights[c] for c in messages)
        mean = sum(messages[c].update * (weights[c] / total) for c in messages)
        return global_state + self.settings.server_lr * mean.to(global_state.dtype)

    def message_bytes(self, message: SplitMessage) -> int:
        activations = sum(int(a.numel()) for a in message.activations) * 4
        masks = sum(int(m.numel()) for m in message.masks)  # one byte per position
        return activations + masks + message.label_numel * 8 + message.client_numel * 4

    def download_bytes(self, fed: RoundContext, global_state: torch.Tensor) -> int:
        return self.client_numel * 4

    def reply_bytes(self, message: SplitMessage) -> int:
        return sum(int(g.numel()) for g in message.gradients) * 4

    def transcript_parts(self, messages: dict[int, SplitMessage]) -> dict[int, Message]:
        """The server sees the activations, masks and labels (and, averaging them, the client parts); it
        keeps the gradients it returned for them (its own replies, which a replaying attack needs)."""
        return {c: {"activations": m.activations, "masks": m.masks, "labels": m.labels, "gradients": m.gradients}
                for c, m in messages.items()}

    def trained_on(self, message: SplitMessage) -> list[list[int]]:
        return message.trained_on

    def costs(self) -> dict[str, float]:
        """The client's share of the transformer blocks (its share of the per-token compute, embeddings
        aside), and ``cost.labels_in_clear``: the share of the label values the client's loss read that
        cross to the server as they are. Declared, not measured: it is 1 by construction (SplitFed V1 keeps
        the head, hence the loss, server-side; the transcript holds them, ``transcript_parts``), and it is
        reported so that no table shows split learning's inversion figures without it: under a language
        task the labels ARE the training tokens, so the server reads the text without inverting anything
        (``tests/test_protocols.py::test_split_sends_the_labels_in_the_clear_so_a_language_tasks_text_reaches_the_server``);
        under classification it reads each record's class. Label-leakage attacks (Li et al. 2022, "Label leakage and
        protection in two-party split learning") target the other layout, head and loss on the client,
        where only gradients cross; that layout (U-shaped split) is not built."""
        return {"cost.client_block_share": self.cut / len(blocks_of(self._method.model)), "cost.labels_in_clear": 1.0}

    def round_public(self) -> dict[str, ChannelValue]:
        """The client-side layers as broadcast this round (the server averages them, so it knows them),
        as a module mapping (input_ids, attention_mask) to the activations at the cut."""
        if self._round_start is None:
            return {}
        return {"cut_layer": self.cut, "bottom": Bottom.at(self._method, self._round_start[1], self.cut)}


class _Stop(Exception):
    pass


def _share_rows(cache: Cache, rows: int) -> None:
    """Every layer's cached keys and values of one row, seen as ``rows`` identical rows: a broadcast view,
    where ``batch_repeat_interleave`` copies them ``rows`` times (and the next position's update copies them
    again when it appends). The exhaustive search runs a whole vocabulary of rows after every prefix, so
    the copies were nearly half of the split replay attack's time; the values read are the same."""
    for layer in cache.layers:
        if layer.is_initialized and layer.keys.numel():
            layer.keys = layer.keys.expand(rows, *layer.keys.shape[1:])
            layer.values = layer.values.expand(rows, *layer.values.shape[1:])


class Bottom(nn.Module):
    """The client side of a model frozen at one state: (input_ids, attention_mask) -> cut activations."""

    def __init__(self, model: nn.Module, cut: int, trainable: frozenset[str] = frozenset()):
        super().__init__()
        self.model, self.cut = model, cut
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        pad = model.config.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else 0
        self.trainable = trainable
        """Names of the parameters the client trains (``Method.named_trainable``), for ``follow``."""
        self._optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def at(cls, method: Method, state: torch.Tensor, cut: int) -> Bottom:
        import copy

        model = copy.deepcopy(method.model).eval()
        params = dict(model.named_parameters())
        offset = 0
        with torch.no_grad():
            for name, p in method.named_trainable:
                params[name].copy_(state[offset: offset + p.numel()].view_as(p).to(p.dtype))
                offset += p.numel()
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model, cut, frozenset(name for name, _ in method.named_trainable))

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, shared_prefix: int = 0) -> torch.Tensor:
        """The activations at the cut, (rows, positions, hidden). With ``shared_prefix`` = p > 0 every
        row starts with the same p tokens (row 0's are used): they run once, their keys and values are
        shared by all rows, and only positions p.. are returned, (rows, positions - p, hidden). This is
        what makes trying every token of the vocabulary after a prefix affordable (the inversion's
        exhaustive search): one prefix pass, then one position per candidate."""
        if shared_prefix <= 0:
            return self._run(input_ids, attention_mask, None)
        if self.cut == 0:  # no block below the cut to cache (and an empty cache would restart the positions)
            return self._run(input_ids, attention_mask, None)[:, shared_prefix:]
        from transformers import DynamicCache

        cache = DynamicCache()
        self._run(input_ids[:1, :shared_prefix], attention_mask[:1, :shared_prefix], cache)
        _share_rows(cache, input_ids.shape[0])
        return self._run(input_ids[:, shared_prefix:], attention_mask, cache)

    def follow(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, gradient: torch.Tensor,
               optimizer: str, lr: float) -> None:
        """Replays one of the client's local steps on this copy (``ClientLayers.follow``). The client's
        optimizer covers its server-side parameters too, but per-parameter (SGD, Adam): those get no
        gradient here and are skipped, so the client-side update is the client's. (A tied LM head's
        server-side gradient into the embedding is not replayed: exact for untied models.)"""
        params = [p for name, p in self.model.named_parameters() if name in self.trainable]
        if self._optimizer is None:
            for p in params:
                p.requires_grad_(True)
            self._optimizer = make_optimizer(optimizer, params, lr)
        self._optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            out = self._run(input_ids, attention_mask, None)
        torch.autograd.backward(out, gradient.to(out.dtype))
        self._optimizer.step()

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def grab(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: HookOutput) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop  # the server-side layers are not the client's to run

        handle = cut_module(self.model, self.cut).register_forward_hook(grab)
        try:
            if cache is None:
                self.model(input_ids=input_ids, attention_mask=attention_mask)
            else:  # the blocks below the cut fill (or read) the cache before the cut stops the pass
                self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured[0]
