"""The protocol contract: what crosses the wire in one round of the ONE round loop.

A protocol is a federation setting (``federation.protocol``), not a second loop: ``bench.engine.federation``
samples the clients, keeps the transcript and the costs, and asks the run's protocol three things:

1. ``client_message``  what a sampled client computes from the broadcast state and its own data, and the
                       message it sends (what the server vantage sees of it);
2. ``combine``         how the server turns the round's messages into the next global (flat) state;
3. ``message_bytes`` / ``download_bytes``   what each direction costs.

Parameter sharing (``fedavg``, ``fedsgd``) is the protocol whose messages are flat weight updates: for it
the engine keeps its own path (update hooks, transports, robust aggregation), unchanged, so
``shares_parameters`` is the whole seam there. Other protocols (``kd``: logits on a public proxy set;
``split``: activations at a cut layer) declare the ``Channel`` their messages travel on; defenses and
attacks that read or rewrite a channel declare which (``Defense.channels``, ``Attack.channels``), and
planning refuses a pairing whose channels differ, before training.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, TypeAlias
from typing import Protocol as TypingProtocol

import torch

from bench.api.transcript import ChannelValue, ProtocolSettings
from bench.api.vocabulary import Record

if TYPE_CHECKING:  # named in annotations only: both import this module
    from bench.api.defense import Defense
    from bench.api.method import Method


def scored_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(rows, classes) logits where the task's loss scores: one row per example (classification), one
    per scored next-token position (text). KD's shared logits and the attacks on them agree on rows."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits.float()
    if logits.dim() == 2:
        return logits
    return logits[:, :-1][batch["labels"][:, 1:] != -100]


class Channel(enum.StrEnum):
    """What a client's message carries."""

    PARAMETERS = "parameters"
    """A flat update of the trainable state (FedAvg's weight difference, FedSGD's step)."""
    LOGITS = "logits"
    """Output scores on a public proxy set (knowledge distillation)."""
    ACTIVATIONS = "activations"
    """Hidden states at a cut layer, answered by their gradients (split learning)."""


Message: TypeAlias = object
"""What one client sends in a round, of the protocol's own type (KD: a logits tensor; split learning: its
``SplitMessage``): the engine only counts it (``message_bytes``) and hands it back to the protocol that made it."""


class ClientLayers(TypingProtocol):
    """Split learning's client side as the server holds it (``RoundRecord.channel["bottom"]``): the
    embedding and the blocks below the cut, at one state, mapping tokens to the activations at the cut."""

    vocab_size: int
    pad_token_id: int
    """The token the client's collation puts in padded positions (their activations cross the wire too)."""

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, shared_prefix: int = 0) -> torch.Tensor:
        """(rows, positions, hidden) activations at the cut; with ``shared_prefix`` p, every row starts with
        row 0's first p tokens, which run once, and only positions p.. are returned."""
        ...

    def follow(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, gradient: torch.Tensor,
               optimizer: str, lr: float) -> None:
        """One local step of the client, replayed: backward of the cut activations of ``input_ids`` from
        ``gradient`` (what the server returned), then the client's optimizer step (its state kept
        between calls, as the client's is within a round)."""
        ...


class ClientShard(TypingProtocol):
    """One client's data as a protocol trains on it (``bench.world.partition.ClientData``)."""

    @property
    def members(self) -> list[Record]: ...


class RoundContext(TypingProtocol):
    """What a protocol reads of the running federation (``bench.engine.federation.Federation`` has it)."""

    @property
    def method(self) -> Method: ...
    @property
    def clients(self) -> Sequence[ClientShard]: ...
    @property
    def collate(self) -> Callable[[list[Record]], dict[str, torch.Tensor]]: ...
    @property
    def defenses(self) -> Sequence[Defense]: ...
    @property
    def public(self) -> list[Record]: ...
    @property
    def seed_parts(self) -> tuple[int | str, ...]: ...
    @property
    def trainer(self) -> Callable[..., dict[str, float]]:
        """The clients' local trainer (``bench.client.training.Trainer``: a ``LocalJob`` in, its losses out)."""
        ...


class Protocol:
    """One way clients and server exchange in a round; registered in ``PROTOCOLS`` by name."""

    name: ClassVar[str]
    channel: ClassVar[Channel] = Channel.PARAMETERS
    shares_parameters: ClassVar[bool] = True
    """True: messages are flat parameter updates and the engine's own FedAvg path runs them (hooks,
    transport, robust rules); the methods below are then not called."""
    one_step: ClassVar[bool] = False
    """Each client takes one plain SGD step and sends the step itself (FedSGD)."""

    def __init__(self, settings: ProtocolSettings):
        self.settings = settings
        """``bench.spec.scenario.Federation`` (or any object with its fields)."""

    def label(self) -> str:
        """How reports name this protocol with the settings that change what its channel carries (Table 4
        keeps a cell per label, so runs at different cut depths are never paired)."""
        return self.name

    def setup(self, fed: RoundContext) -> None:
        """Once before the first round, with the ``bench.engine.federation.Federation`` (its ``public``
        records, clients, method, seed)."""

    def client_message(self, fed: RoundContext, round_index: int, client: int, global_state: torch.Tensor) -> Message:
        """Train ``client`` from the broadcast ``global_state`` and return what it sends."""
        raise NotImplementedError

    def combine(self, fed: RoundContext, round_index: int, messages: dict[int, Message], weights: dict[int, float],
                global_state: torch.Tensor) -> torch.Tensor:
        """The next global flat state from the round's messages (``weights``: example counts)."""
        raise NotImplementedError

    def seal(self, round_index: int, messages: dict[int, object], weights: dict[int, float],
             rng: torch.Generator) -> dict[int, object]:
        """The round's messages as they reach the server, once all are in: a secure-aggregation transport
        masks them together (KD's logits under ``secagg``); by default, as the clients sent them."""
        return messages

    def server_sum(self) -> torch.Tensor | None:
        """What the server combined this round's messages into (KD: the consensus; it holds it whether or
        not the messages were masked), kept as the round's ``aggregate``; None when there is none."""
        return None

    def message_bytes(self, message: Message) -> int:
        """Bytes a client sent to the server this round."""
        raise NotImplementedError

    def plain_bytes(self, fed: RoundContext) -> int:
        """Bytes a parameter-sharing client would send instead (a full float32 update): the yardstick."""
        return int(fed.method.num_trainable) * 4

    def download_bytes(self, fed: RoundContext, global_state: torch.Tensor) -> int:
        """Bytes the server sent one sampled client this round."""
        return int(global_state.numel()) * 4

    def reply_bytes(self, message: Message) -> int:
        """Bytes the server sent back to the client in answer to ``message`` (split learning's gradients)."""
        return 0

    def trained_on(self, message: Message) -> list[list[int]] | None:
        """The token sequences the client trained on (ground truth for inversion scorers), or None."""
        return None

    def transcript_parts(self, messages: dict[int, Message]) -> dict[int, Message]:
        """What the server vantage keeps of each message (``RoundRecord.transmitted``)."""
        return dict(messages)

    def round_public(self) -> dict[str, ChannelValue]:
        """Public per-round artifacts the server holds anyway (``RoundRecord.channel``): the proxy set, the
        client-side layers it averages; empty for parameter sharing."""
        return {}

    def costs(self) -> dict[str, float]:
        """Extra cost metrics (``cost.*``) this protocol measured."""
        return {}
