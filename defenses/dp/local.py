"""``dp-local``: record-level DP-SGD inside each client (Abadi et al., CCS 2016), with Opacus 1.6.

Each client trains with per-example gradient clipping (``max_grad_norm``), Gaussian noise of std
``noise_multiplier * max_grad_norm`` on the clipped sum, and Poisson sampling at rate
``q = batch_size / n_client`` (``bench.client.training.LocalJob`` gives both). The privacy unit is one
training record of one client; the guarantee is about that client's own dataset, so each client has
its own accountant and its steps accumulate over every round it takes part in. ``privacy()``
reports the worst client.

Departures from the paper / from plain Opacus usage:

- Accounting ignores the extra amplification from the server sampling clients each round
  (conservative: a client is charged for the rounds it actually trained in).
- With ``target_epsilon`` the noise is calibrated once, before training, for the smallest client
  (largest ``q``) and, by default, for a client that takes part in every round
  (``calibrate_for: every-round``); ``expected`` calibrates for ``rounds * clients_per_round /
  clients`` participations instead, which the reported epsilon of an unlucky client can exceed.
- ``grad_sample_mode: auto`` probes Opacus' modes once per model class on the first job (per-sample
  norms must match batch-of-one autograd; then the fastest wins, with a 25% margin so that timing
  noise does not flip the choice). Set a mode explicitly for bit-exact reruns across machines.
- Under ``auto`` a round's clients train together where ``bench.client.batched`` allows it: the same
  Poisson batches, clipping, noise draws and optimizer steps, with per-sample gradients from
  ``torch.func`` over all clients at once (``bench.client.private_group``; ``dp.grad_sample_mode``
  then reads ``vmap``). An explicit Opacus mode keeps every client on Opacus, one at a time.
- Opacus' hooks are attached for each client job and removed after it (the base model is shared
  with evaluation, attacks and other scenarios); autograd's summed weight gradients, which DP-SGD
  discards, are not computed (see ``defenses/dp/hooks.py``).
- ``wrap_training`` replaces the trainer it is given (DP-SGD is a different trainer, not a wrapper).
- ``audit_canaries`` adds a one-run audit (Steinke, Nasr, Jagielski 2023; ``defenses/dp/audit.py``):
  one client's data gets canaries, each with probability 1/2, and ``dp.epsilon_lower`` is reported
  beside that client's own accountant epsilon (``dp.audit_epsilon``). The audited client trains on
  more records than the others, so its sampling rate (and epsilon) is lower than without the audit.
- The privacy unit is one example as the task batches it: a method whose forward packs several
  sequences of one example into separate rows (DPO's chosen and rejected) must run them as separate
  forward calls; otherwise training stops with an error rather than under-report epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from bench.api.config import doc
from bench.api.defense import Defense, DefenseSlot, PrivacyReport
from bench.api.private_steps import PrivateSteps
from bench.api.registry import DEFENSES
from bench.api.transcript import FederationSettings, PlannedScenario
from bench.api.vocabulary import DefenseFamily
from bench.client.training import LocalJob, Trainer
from defenses.dp.accounting import Ledger, calibrate_noise
from defenses.dp.audit import ClientAudit
from defenses.dp.sgd import DPSGDSettings, resolve_mode, run_dp_sgd

PARTICIPATIONS: dict[str, Callable[[FederationSettings], int]] = {
    "every-round": lambda federation: int(federation.rounds),
    "expected": lambda federation: math.ceil(
        federation.rounds * min(1.0, federation.clients_per_round / federation.clients)
    ),
}
"""How many rounds a client is assumed to train in when calibrating noise to ``target_epsilon``."""
BATCHED_MODE = "vmap"
"""``dp.grad_sample_mode`` of clients trained together: per-sample gradients by ``torch.func`` over a round's
clients (``bench.client.private_group``), not by Opacus."""
STEPS_PER_ROUND: dict[str, Callable[[FederationSettings], int]] = {"fedsgd": lambda federation: 1}
"""Local steps per participation by protocol; FedAvg (the default) takes ``local_steps``."""


def default_delta(total_examples: int) -> float:
    """delta well below 1/N (N = all records in the federation), and at most 1e-5."""
    return min(1e-5, 0.1 / max(total_examples, 1))


@DEFENSES.register("dp-local")
class DPLocal(Defense):
    """Record-level DP-SGD inside each client (Abadi et al. 2016, Opacus): clip per example, add noise."""

    slot = DefenseSlot.TRAINING
    family = DefenseFamily.DP
    replaces_training = True
    @dataclass(frozen=True, kw_only=True)
    class Config:
        noise_multiplier: float | None = doc("Noise std / max_grad_norm. Give this or target_epsilon.", None)
        target_epsilon: float | None = doc("Calibrate the noise so the worst client ends at this epsilon.", None)
        delta: float | None = doc("delta of the (epsilon, delta) guarantee; default min(1e-5, 0.1/N).", None)
        max_grad_norm: float = doc("Per-example gradient L2 clip norm C.", 1.0)
        accountant: Literal["rdp", "prv"] = doc("Opacus accountant: rdp (Renyi DP) or prv (PRV).", "rdp")
        grad_sample_mode: Literal["auto", "hooks", "ghost", "functorch"] = doc(
            "Per-sample-gradient mode: an Opacus mode (clients one at a time), or auto: a round's clients together "
            "under torch.func where batching applies, else Opacus' modes probed and the fastest that is right kept.",
            "auto",
        )
        calibrate_for: Literal["every-round", "expected"] = doc(
            "Participations assumed by target_epsilon calibration: every round, or the expected count.",
            "every-round",
        )
        audit_canaries: int = doc(
            "One-run audit (Steinke et al. 2023): canaries made for one client, each added to its data with "
            "probability 1/2; reports dp.epsilon_lower. 0 = no audit.", 0
        )
        audit_client: int = doc("The client whose guarantee is audited.", 0)
        audit_confidence: float = doc("Confidence of the audit's epsilon lower bound.", 0.95)

        def __post_init__(self) -> None:
            if (self.noise_multiplier is None) == (self.target_epsilon is None):
                raise ValueError("give exactly one of noise_multiplier and target_epsilon")
            if self.noise_multiplier is not None and self.noise_multiplier < 0:
                raise ValueError("noise_multiplier must be >= 0")
            if self.target_epsilon is not None and not self.target_epsilon > 0:
                raise ValueError("target_epsilon must be > 0")
            if not (0 < self.max_grad_norm < math.inf):
                raise ValueError("max_grad_norm must be a positive finite number")
            if self.delta is not None and not 0 < self.delta < 1:
                raise ValueError("delta must be in (0, 1)")
            if self.audit_canaries < 0 or self.audit_canaries == 1:
                raise ValueError("audit_canaries must be 0 (no audit) or at least 2")
            if not 0 < self.audit_confidence < 1:
                raise ValueError("audit_confidence must be in (0, 1)")

    def __init__(self, config: Config):
        super().__init__(config)
        self.ledger = Ledger()
        self.delta = config.delta if config.delta is not None else 1e-5
        self.noise_multiplier = config.noise_multiplier
        self.mode: str | None = None
        self.audit: ClientAudit | None = None

    def setup(self, scenario: PlannedScenario, num_examples: dict[int, int], *, peers: Sequence[Defense] = ()) -> None:
        if self.config.audit_canaries and self.config.audit_client not in num_examples:
            raise ValueError(f"audit_client {self.config.audit_client} is not a client (0..{len(num_examples) - 1})")
        if self.config.delta is None:
            self.delta = default_delta(sum(num_examples.values()))
        if self.config.target_epsilon is not None:
            federation = scenario.federation
            smallest = max(1, min(num_examples.values()))
            per_round = STEPS_PER_ROUND.get(federation.protocol, lambda f: int(f.local_steps))
            steps = per_round(federation) * PARTICIPATIONS[self.config.calibrate_for](federation)
            self.noise_multiplier = calibrate_noise(
                self.config.target_epsilon,
                self.delta,
                sample_rate=min(1.0, federation.batch_size / smallest),
                steps=steps,
                accountant=self.config.accountant,
            )

    def wrap_training(self, train_step: Trainer, client: int, rng: torch.Generator) -> Trainer:
        if self.noise_multiplier is None:
            raise RuntimeError("dp-local with target_epsilon needs setup(scenario, num_examples) before training")

        audited = self.config.audit_canaries > 0 and client == self.config.audit_client

        def train_with_dp_sgd(job: LocalJob) -> dict[str, float]:
            if audited:
                return self._audited(job, train_with_dp_sgd_plain)
            return train_with_dp_sgd_plain(job)

        def train_with_dp_sgd_plain(job: LocalJob) -> dict[str, float]:
            mode = resolve_mode(job, self.config.grad_sample_mode, self.config.max_grad_norm)
            self._note_mode(mode)
            settings = DPSGDSettings(
                noise_multiplier=float(self.noise_multiplier),
                max_grad_norm=self.config.max_grad_norm,
                sample_rate=min(1.0, job.batch_size / len(job.examples)),
                mode=mode,
            )
            result = run_dp_sgd(job, settings, noise_rng=rng)
            self.ledger.record(client, settings.noise_multiplier, settings.sample_rate, job.steps)
            return result

        return train_with_dp_sgd

    def batching_problem(self) -> str | None:
        if self.config.grad_sample_mode != "auto":  # an explicit Opacus mode is kept, for bit-exact reruns
            return (f"dp-local grad_sample_mode {self.config.grad_sample_mode}: Opacus trains one client at a "
                    "time (auto trains a round's clients together)")
        return None

    def private_steps(self, client: int, examples: int, batch_size: int) -> PrivateSteps | None:
        if self.noise_multiplier is None:
            raise RuntimeError("dp-local with target_epsilon needs setup(scenario, num_examples) before training")
        if self.config.audit_canaries > 0 and client == self.config.audit_client:
            return None  # its canaries change its records: it trains alone (``_audited``)
        sample_rate = min(1.0, batch_size / examples)
        noise_multiplier = float(self.noise_multiplier)

        def finished(steps: int) -> None:
            self._note_mode(BATCHED_MODE)
            self.ledger.record(client, noise_multiplier, sample_rate, steps)

        return PrivateSteps(sample_rate=sample_rate, max_grad_norm=self.config.max_grad_norm,
                            noise_multiplier=noise_multiplier, finished=finished)

    def _note_mode(self, mode: str) -> None:
        """``dp.grad_sample_mode`` names every way this run computed per-sample gradients (``hooks+vmap``
        when some clients trained together and one alone)."""
        used = set(self.mode.split("+")) if self.mode else set()
        self.mode = "+".join(sorted(used | {mode}))

    def _audited(self, job: LocalJob, train: Trainer) -> dict[str, float]:
        """Train the audited client on its records plus the included canaries; score the canaries after."""
        if self.audit is None:
            # Its own stream (not job.rng): the canaries must not shift the client's batch sampling.
            self.audit = ClientAudit(self.config.audit_canaries, seed=job.rng.initial_seed() ^ 0x5EED)
        augmented = self.audit.augment(job)
        result = train(augmented)
        own = len(job.examples)  # the truth about which records trained excludes the canaries
        job.seen.extend([i for i in step if i < own] for step in augmented.seen)
        self.audit.after = self.audit.losses(augmented)
        return result

    def privacy(self) -> PrivacyReport:
        worst, epsilon = self.ledger.worst(self.delta, self.config.accountant)
        history = self.ledger.histories.get(worst, []) if worst is not None else []
        return {
            "dp.epsilon": epsilon,
            "dp.delta": self.delta,
            "dp.accountant": self.config.accountant,
            "dp.level": "record",
            "dp.noise_multiplier": self.noise_multiplier,
            "dp.clip_norm": self.config.max_grad_norm,
            "dp.sampling_rate": max((q for _, q, _ in history), default=0.0),
            "dp.steps": self.ledger.steps(worst) if worst is not None else 0,
            "dp.grad_sample_mode": self.mode or self.config.grad_sample_mode,
            "dp.sampling": "poisson",  # run_dp_sgd draws each record independently at rate q
            "dp.neighbouring": "add-remove",
            **self._audit_report(),
        }

    def _audit_report(self) -> PrivacyReport:
        if self.audit is None:
            return {}
        audited = self.config.audit_client
        lower = self.audit.epsilon_lower(self.delta, self.config.audit_confidence)
        return {
            "dp.epsilon_lower": lower if lower is not None else float("nan"),
            "dp.audit_epsilon": self.ledger.epsilons(self.delta, self.config.accountant).get(audited, 0.0),
            "dp.audit_canaries": self.config.audit_canaries,
            "dp.audit_included": int(self.audit.included.sum()),
        }
