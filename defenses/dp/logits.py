"""``dp-logits``: the Gaussian mechanism on the logits a KD client shares (``federation.protocol: kd``).

Before the logits leave the client, each row (one proxy example, or one scored token position) is
clipped to L2 norm C over its shared entries, and Gaussian noise is added to every shared entry.

Guarantee, stated: the privacy unit is one client's whole dataset (replace-one). Replacing it can move
each clipped row by at most 2C, so the L2 sensitivity of one release of ``rows`` rows is
Delta = 2C sqrt(rows); the noise std is ``noise_multiplier`` x Delta, which makes each release a Gaussian
mechanism with noise multiplier z. A client's releases compose over the rounds it was sampled in (adaptive
composition: a later release depends on the consensus, i.e. on earlier releases); epsilon is the RDP
accountant's (Mironov 2017, through Opacus, as ``dp-local``/``dp-central``) at sampling rate 1, i.e. no
amplification by client sampling claimed, reported for the worst client. Not covered: top-k sharing (which
entries are shared is itself data-dependent; ``kd_top_k`` > 0 is refused), and record-level DP (a single
record's influence is not bounded more tightly than the whole dataset's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bench.api.config import doc
from bench.api.defense import Defense, DefenseSlot, PrivacyReport
from bench.api.plugin_types import ExchangeScenario
from bench.api.private_steps import generator_on
from bench.api.protocol import Channel
from bench.api.registry import DEFENSES
from bench.api.vocabulary import DefenseFamily
from defenses.dp.accounting import Ledger

ACCOUNTANT = "rdp"


def clip_rows(message: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Each row scaled to L2 norm at most ``clip_norm`` over its finite (shared) entries."""
    shared = torch.isfinite(message)
    values = torch.where(shared, message, torch.zeros_like(message))
    norms = values.norm(dim=-1, keepdim=True)
    scale = torch.clamp(clip_norm / norms.clamp_min(1e-12), max=1.0)
    return torch.where(shared, values * scale, message)


@DEFENSES.register("dp-logits")
class DPLogits(Defense):
    """Clip each shared logit row to C and add Gaussian noise calibrated to a client's whole dataset."""

    slot = DefenseSlot.CLIENT_UPDATE
    family = DefenseFamily.DP
    channels = frozenset({Channel.LOGITS})

    @dataclass(frozen=True, kw_only=True)
    class Config:
        clip_norm: float = doc("Per-row L2 clip norm C of the shared (temperature-scaled) logits (> 0).", 5.0)
        noise_multiplier: float = doc("z: noise std over the release's sensitivity 2C sqrt(rows) (>= 0).", 1.0)
        delta: float = doc("delta of the guarantee (0 < delta < 1).", 1e-5)

        def __post_init__(self) -> None:
            if not 0 < self.clip_norm < math.inf:
                raise ValueError("clip_norm must be a positive finite number")
            if self.noise_multiplier < 0:
                raise ValueError("noise_multiplier must be >= 0")
            if not 0 < self.delta < 1:
                raise ValueError("delta must be in (0, 1)")

    def __init__(self, config: Config):
        super().__init__(config)
        self.ledger = Ledger()
        self.rows = 0

    def check_compatible(self, others: list[Defense], scenario: ExchangeScenario) -> str | None:
        if scenario.federation.kd_top_k > 0:
            return "dp-logits covers dense logits; which top-k entries are shared is not covered (set kd_top_k: 0)"
        return None

    def setup(self, scenario: ExchangeScenario, num_examples: dict[int, int], *, peers: Sequence[Defense] = ()) -> None:
        self.ledger = Ledger()

    def on_channel(self, round_index: int, client: int, message: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        self.rows = int(message.shape[0]) if message.dim() > 1 else 1
        clipped = clip_rows(message, self.config.clip_norm)
        std = self.config.noise_multiplier * 2 * self.config.clip_norm * math.sqrt(self.rows)
        self.ledger.record(client, self.config.noise_multiplier, 1.0, 1)
        if std == 0:
            return clipped
        noise = torch.randn(clipped.shape, generator=generator_on(clipped.device, rng), device=clipped.device) * std
        return torch.where(torch.isfinite(clipped), clipped + noise, clipped)

    def privacy(self) -> PrivacyReport:
        _, epsilon = self.ledger.worst(self.config.delta, ACCOUNTANT)
        return {
            "dp.epsilon": epsilon,
            "dp.delta": self.config.delta,
            "dp.accountant": ACCOUNTANT,
            "dp.level": "client",
            "dp.noise_multiplier": self.config.noise_multiplier,
            "dp.clip_norm": self.config.clip_norm,
            "dp.sampling_rate": 1.0,
            "dp.steps": max((self.ledger.steps(c) for c in self.ledger.histories), default=0),
            "dp.noise_at": "clients",
            "dp.sampling": "none claimed (each participation counted)",
            "dp.neighbouring": "replace-one (a client's whole dataset)",
        }
