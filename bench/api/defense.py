"""The defense contract: hooks into the single round loop of ``bench.engine.federation``.

Order inside one round:

1. ``wrap_training``      client side, around local training (record-level DP-SGD)
2. ``on_client_update``   client side, on the flat update before it leaves the client (clipping)
3. ``transport``          what the server sees: the one ``TRANSPORT`` defense (secagg, he), else plain
4. ``aggregate``          server side, replaces the weighted mean: the one ``AGGREGATION`` defense (robust-*)
5. ``on_aggregate``       server side, on the aggregate (central DP noise)
6. ``privacy``            after the run: epsilon, delta, accountant, level

Composition. Every defense declares the ``DefenseSlot`` its own work fills. ``composition_problem``
says, from the classes alone and before anything is built or trained, whether a list of defenses fits
the slots' capacities (one aggregation rule, at most one transport, any number of update hooks, at
most one defense that replaces local training); the scenario loader refuses a file that breaks them
and ``bench.engine.runner.incompatibility`` refuses a hand-built plan that does. ``in_slot_order`` is the
declared order in which the engine calls each hook over a run's defenses (``bench.engine.runner.plan`` puts
them in it; the YAML order does not count): slot by slot in ``DefenseSlot`` order, then by name
within a slot. The order matters only between defenses that change the same thing at the same hook
(clipping then noising an update is not noising then clipping it; a replacing trainer discards the
trainer it wraps); the shipped defenses each fill a different slot, so for them it changes nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypedDict

import torch

from bench.api.privacy import PrivacyAccounting
from bench.api.private_steps import PrivateSteps
from bench.api.protocol import Channel
from bench.api.transcript import PlannedScenario
from bench.api.vocabulary import DefenseFamily

PrivacyReport = TypedDict("PrivacyReport", {
    "dp.epsilon": float, "dp.delta": float, "dp.accountant": str, "dp.level": str, "dp.noise_multiplier": float,
    "dp.clip_norm": float, "dp.sampling_rate": float, "dp.steps": int, "dp.noise_at": str, "dp.sampling": str,
    "dp.neighbouring": str, "dp.grad_sample_mode": str, "dp.epsilon_lower": float, "dp.audit_epsilon": float,
    "dp.audit_canaries": int, "dp.audit_included": int,
    "privacy.scrubbed_items": int, "privacy.residual_pii_fraction": float,
}, total=False)
"""What a defense reports after a run (``Defense.privacy``), each key with its type. The spelled keys are
the stored metric names: numbers become metric rows (``dp.epsilon``: the accountant's epsilon at
``dp.delta``; ``dp.level``: ``record`` or ``user``; ``dp.epsilon_lower``: an audit's lower bound), text
goes to the run's ``extra``. A key absent means the defense does not measure it. ``bench.api.privacy.PrivacyAccounting``
is the same report as a typed object (one field per key, with the direction its metric is stored with)."""


LocalTrainer = Callable[..., dict[str, float]]
"""A client's local trainer (``bench.client.training.Trainer``: a ``LocalJob`` in, its losses out); the api
names its shape because the client layer sits above it."""


class PrivacyLedger(Protocol):
    """Per privacy unit, the composed history of subsampled Gaussian steps as ``(noise_multiplier,
    sample_rate, steps)`` (``defenses.dp.accounting.Ledger``)."""

    histories: dict[int, list[tuple[float, float, int]]]

    def record(self, unit: int, noise_multiplier: float, sample_rate: float, steps: int) -> None: ...


class PrivacyAudit(Protocol):
    """A one-run privacy audit's client-side state (``defenses.dp.audit.ClientAudit``)."""

    def epsilon_lower(self, delta: float, confidence: float) -> float | None: ...


class DefenseSlot(enum.Enum):
    """Where a defense's own work sits in the round loop; the members are in the order hooks run."""

    TRAINING = "training"
    """Inside each client's local training (``wrap_training``): record-level DP-SGD (dp-local). Any
    number of wrappers, at most one that replaces the trainer (``replaces_training``)."""
    CLIENT_UPDATE = "client-update"
    """On each finished update before it leaves the client, and on the aggregate (``on_client_update``,
    ``on_aggregate``): user-level clipping and noise (dp-central). Any number."""
    TRANSPORT = "transport"
    """What the server receives (``transport``): secagg, he. At most one: a client sends one message."""
    AGGREGATION = "aggregation"
    """Replaces the weighted mean with a rule that reads each client's plain update (``aggregate``):
    robust-*. At most one: a round has one aggregate."""

    @property
    def capacity(self) -> int | None:
        """How many defenses of one scenario may fill this slot; None: any number."""
        return 1 if self in (DefenseSlot.TRANSPORT, DefenseSlot.AGGREGATION) else None


class Transport:
    """Carries client updates to the server. The plain transport sends float vectors."""

    def encode(
        self, round_index: int, updates: dict[int, torch.Tensor], weights: dict[int, float], rng: torch.Generator
    ) -> dict[int, Any]:
        """Each client's message as the server receives it."""
        return dict(updates)

    def aggregate(self, round_index: int, messages: dict[int, Any], weights: dict[int, float]) -> torch.Tensor:
        """The weighted mean of the updates, recovered from the messages."""
        total = sum(weights[c] for c in messages)
        return weighted_sum([messages[c] for c in messages], [weights[c] / total for c in messages])

    def survivors(self, round_index: int, messages: dict[int, Any]) -> int:
        """How many clients' updates the aggregate ``aggregate`` just returned for this round averages
        over (fewer than sampled when clients dropped): every client whose message arrived."""
        return len(messages)

    def message_bytes(self, message: Any) -> int:
        return int(message.numel() * message.element_size())

    def decode_individual(self, messages: dict[int, Any]) -> dict[int, torch.Tensor]:
        """Individual float updates, for robust aggregation; only the plain transport can."""
        return dict(messages)


def weighted_sum(tensors: list[torch.Tensor], factors: list[float]) -> torch.Tensor:
    """``sum(t * f for t, f in zip(tensors, factors))``, bit for bit, with two buffers instead of one new
    tensor per term and per partial sum (a 135M-parameter update is 540 MB: each fresh one costs its
    page faults). The same products added in the same order; ``+= 0`` is ``sum``'s start (``0 + x``
    turns -0.0 into +0.0). Tensors of mixed dtypes, shapes or devices take ``sum`` itself."""
    first = tensors[0] if tensors else None
    if first is None or any(t.dtype != first.dtype or t.shape != first.shape or t.device != first.device
                            for t in tensors):
        return sum(t * f for t, f in zip(tensors, factors))
    total = first * factors[0]
    total += 0
    scratch = torch.empty_like(total) if len(tensors) > 1 else total
    for tensor, factor in zip(tensors[1:], factors[1:]):
        torch.mul(tensor, factor, out=scratch)
        total += scratch
    return total


class Defense:
    name: ClassVar[str]
    family: ClassVar[DefenseFamily]
    """The family reports compare this defense as (Table 4's paper marks are per family); every defense
    declares one (checked when it is built), stored beside its rows: a report never reads it off the name."""
    slot: ClassVar[DefenseSlot] = DefenseSlot.CLIENT_UPDATE
    """The slot this defense's own work fills (see ``DefenseSlot``); a class that overrides
    ``transport`` or ``aggregate`` must declare ``TRANSPORT`` or ``AGGREGATION`` (checked at import)."""
    replaces_training: ClassVar[bool] = False
    """True when ``wrap_training`` runs its own trainer (DP-SGD) instead of wrapping the given one."""
    needs_generation: ClassVar[bool] = False
    """True when the defense rewrites a client's data with the model itself (``constitutional``): the engine
    then sets ``generate_fn`` before training."""
    needs_server_update: ClassVar[bool] = False
    """True when the aggregation rule needs a server update trained on a public root set each round
    (FLTrust): the engine then sets ``server_update_fn`` before training."""
    requires_uniform_weights: ClassVar[bool] = False
    """True when the aggregate must weight clients equally (user-level DP-FedAvg's sensitivity)."""
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.PARAMETERS})
    """The message channels (``bench.api.protocol.Channel``) this defense's non-training hooks act on;
    planning refuses it under a protocol whose channel is not among them (a TRAINING-slot defense
    runs under any protocol that trains locally)."""

    ledger: PrivacyLedger | None = None
    """The privacy ledger client-side training records into (dp-local), or None. Declared so that an engine
    training clients in another process (Flower) carries its new entries back to the server's copy."""
    audit: PrivacyAudit | None = None
    """A one-run audit's client-side state (dp-local's canaries), or None. Declared so that an engine training
    clients in other processes (Flower) carries it both ways: the server's copy down to each job, a job's
    changed copy back (it must pickle)."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        pass

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        for hook, slot in (("transport", DefenseSlot.TRANSPORT), ("aggregate", DefenseSlot.AGGREGATION)):
            if hook in vars(cls) and cls.slot is not slot:  # the engine calls this hook only for that slot
                raise TypeError(f"{cls.__qualname__} overrides {hook} and must declare slot = DefenseSlot.{slot.name}")
        stating = any(hook in vars(cls) for hook in ("batching_problem", "private_steps"))
        if stating and not cls.replaces_training:  # batched training would bypass a mere wrapper's wrap_training
            raise TypeError(f"{cls.__qualname__} states its trainer for batched training and must declare "
                            "replaces_training = True")

    def __init__(self, config: Any):
        if not isinstance(declared_family(type(self)), DefenseFamily):
            raise TypeError(f"{type(self).__qualname__} must declare family = DefenseFamily.<one of "
                            f"{', '.join(m.name for m in DefenseFamily)}>")
        self.config = config

    def check_compatible(self, others: list[Defense], scenario: PlannedScenario) -> str | None:
        """A reason this defense cannot run with ``others`` in ``scenario``, or None. Must not change any
        state: planning calls it, possibly more than once; decisions that depend on the other defenses
        belong in ``setup``, which gets them."""
        if self.slot is DefenseSlot.AGGREGATION:
            hiding = [d.name for d in others if d.slot is DefenseSlot.TRANSPORT]
            if hiding:
                return f"{self.name} needs each client's update, which {hiding[0]} hides from the server"
        return None

    def setup(self, scenario: PlannedScenario, num_examples: dict[int, int], *, peers: Sequence[Defense] = ()) -> None:
        """Called once before training with the scenario, each client's member count and the run's
        other defenses (``peers``)."""

    def wrap_training(self, train_step: LocalTrainer, client: int, rng: torch.Generator) -> LocalTrainer:
        return train_step

    def batching_problem(self) -> str | None:
        """Why a round's clients cannot train together (``bench.client.batched``) under this defense, or None.
        A defense that wraps local training cannot, unless it replaces the trainer (``replaces_training``,
        checked at import), overrides this and states its trainer as ``private_steps``."""
        if type(self).wrap_training is Defense.wrap_training:
            return None
        return f"defense {self.name} replaces the local trainer"

    def private_steps(self, client: int, examples: int, batch_size: int) -> PrivateSteps | None:
        """Record-level DP-SGD for ``client`` (``examples`` records, ``batch_size`` expected per step) stated as
        data (``bench.api.private_steps``), for training it beside other clients; None: this client trains
        alone, through ``wrap_training``. Asked only when ``batching_problem`` is None."""
        return None

    def on_client_update(self, round_index: int, client: int, update: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        return update

    def on_channel(self, round_index: int, client: int, message: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Client side, on a non-parameter message before it leaves the client (KD's logits, split
        learning's cut-layer activations): noise, clipping."""
        return message

    def transport(self) -> Transport | None:
        return None

    def aggregate(
        self, round_index: int, updates: torch.Tensor, weights: torch.Tensor, rng: torch.Generator
    ) -> torch.Tensor | None:
        """``updates`` is (clients, parameters); return the aggregate or None to keep the mean."""
        return None

    def on_aggregate(self, round_index: int, aggregate: torch.Tensor, num_clients: int, rng: torch.Generator) -> torch.Tensor:
        """``num_clients``: the clients whose updates ``aggregate`` averages (``Transport.survivors``)."""
        return aggregate

    def coordinate_bound(self) -> float | None:
        """A bound on every coordinate of the updates ``on_client_update`` returns, when this defense's
        guarantee needs a fixed-range transport (secagg) to encode them unclipped; None when it needs none."""
        return None

    def privacy(self) -> PrivacyAccounting | PrivacyReport:
        """The run's privacy accounting: a ``PrivacyAccounting`` (typed fields), or the same as its keyed
        ``PrivacyReport`` dict; empty for a defense that accounts none."""
        return PrivacyAccounting()

    def costs(self) -> dict[str, float]:
        """Extra cost metrics (``cost.*``) this defense measured."""
        return {}


def declared_family(cls: type[Defense]) -> object:
    """The ``family`` a defense class or one of its bases declares, None when none does."""
    return next((vars(k)["family"] for k in cls.__mro__ if "family" in vars(k)), None)


def composition_problem(defenses: Sequence[type[Defense]]) -> str | None:
    """Why these defense classes cannot fill the round loop's slots together, or None. Pure: reads only
    the classes' declarations, so the loader and the planner ask it before anything is built."""
    names = [d.name for d in defenses]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"{twice[0]} is listed twice"
    for slot in DefenseSlot:
        filling = [d.name for d in defenses if d.slot is slot]
        if slot.capacity is not None and len(filling) > slot.capacity:
            return f"at most {slot.capacity} {slot.value} defense per scenario, got {' and '.join(filling)}"
    replacing = [d.name for d in defenses if d.replaces_training]
    if len(replacing) > 1:  # a replacing trainer discards the one it wraps: one of them would not run
        return f"at most one defense may replace local training, got {' and '.join(replacing)}"
    return None


def in_slot_order(defenses: Sequence[Defense]) -> list[Defense]:
    """``defenses`` in the declared order the engine calls their hooks in: by slot, then by name."""
    position = {slot: i for i, slot in enumerate(DefenseSlot)}
    return sorted(defenses, key=lambda d: (position[d.slot], d.name))
