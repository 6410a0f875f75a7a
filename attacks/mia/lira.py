"""LiRA: the likelihood-ratio attack with shadow models.

Carlini, Chien, Nasr, Song, Terzis, Tramer 2022, "Membership Inference Attacks From First
Principles" (IEEE S&P). For each candidate, fit Gaussians to its signal under shadow models trained
with it (IN) and without it (OUT), then score the target model's signal:

- online: score = log N(x; mu_in, s_in) - log N(x; mu_out, s_out). Shadow training sets are random
  halves of (auxiliary ∪ candidates), balanced so each record is IN for exactly half the shadows.
- offline: only OUT shadows (random halves of the auxiliary data); score = (x - mu_out) / s_out, the
  one-sided test's statistic (monotone in its p-value, the paper's offline test; the paper's code
  ranks by a two-sided density instead). ``offline_scores`` also scores the OUT half of an online
  fit, which is how the paper compares online and offline on one set of shadows.

Signal: logit-scaled confidence of the true label (classification) or the negative task loss (text,
the per-example loss of LiRA on language models). Logit-scaling exp(-loss) instead changes only
losses near 0 and was no better on our overfit tiny-gpt2 federations, so it is not offered.

Per-example centres are sample means by default; ``center: median`` takes medians, as the paper's
code does (robust to one diverging shadow). Departure kept on evidence: on the overfit tiny-gpt2
federation of ``tests/benchmarks/test_bench_mia_lira.py`` (16 shadows, 8 per side) the mean gave a
higher AUC and TPR at 0.1% FPR than the median (online AUC 0.729 vs 0.710), TPR at 1% FPR within
noise, as expected of near-Gaussian signals where the mean is the efficient estimate. With
``variance: global`` one variance per side is pooled over all candidates from residuals around each
candidate's own mean; the paper's code takes the spread of all observations, which also counts the
spread between candidates' means, inflates the variance and flattens the ratio. ``variance: auto``
uses the global variance below 64 shadows, where the paper reports per-example variances are
unreliable. In Table 4's regime per-example variances did no better even at 128 offline federated shadows
(mean AUC 0.628 against 0.640 pooled over ten cells, ``results/studies/mia-online/``, "How many shadows");
our reading: where candidates' spreads are alike, the pooled variance is the better-estimated one.

Setting and departures: by default shadows are central fine-tunes of the base model with the target's
method and hyperparameters on random halves of the pool (``view.train_shadow``, provided and cached by the
harness), while the target was trained federatedly on its members, so shadow and target training differ
in how the data was split across clients and in how many records share the model (FedAvg dilutes each
client's memorisation, so IN shadows overstate the target's member shift; offline scores do not depend on
it). The paper trains shadows exactly as the target: ``shadow_records`` (the target's training-set size)
and ``federated_shadows`` (the run's own federation replayed on each shadow's records) do that here. With
shadows far smaller than the pool each candidate is IN for only a few shadows (``sized_membership``), so
the IN Gaussian's centre rests on a few observations and its variance should be pooled (``variance:
global``). Departure (``normalise``, off by default): each model's signals are standardised over the
candidates before the Gaussians are fitted, so a shadow federation that ends a little more or less confident
overall does not shift every candidate's score at once. On Table 4's undefended cells (64 federated shadows
of 64 records, ``results/studies/mia-online/``) it lifted fft and LoRA at seed 1 (AUC 0.50 -> 0.58 and
0.52 -> 0.69, the same shadows scored both ways) and lowered fft at seed 0 (0.61 -> 0.47): with 3-4 IN
shadows per candidate the online ratio is noisy either way. No test-time augmentations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from attacks.mia._common import confidence_signal, derived_generator, membership_scores
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.errors import TierAccessError, UserError
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, Vantage

GLOBAL_VARIANCE_BELOW = 64
_VARIANCE_FLOOR = 1e-8


@dataclass(frozen=True)
class ShadowFit:
    """What LiRA measured: the target's signal, each shadow's signal, and which shadows had each candidate.

    ``candidate_in`` is None when no shadow trained on a candidate (offline LiRA)."""

    target: torch.Tensor  # (candidates,)
    observations: torch.Tensor  # (shadows, candidates)
    candidate_in: torch.Tensor | None  # (shadows, candidates) bool


def balanced_membership(shadows: int, records: int, rng: torch.Generator) -> torch.Tensor:
    """(shadows, records) bool: each record IN for exactly ``shadows // 2`` shadows, chosen at random."""
    ranks = torch.rand(shadows, records, generator=rng).argsort(0).argsort(0)
    return ranks < shadows // 2


def sized_membership(shadows: int, records: int, size: int, rng: torch.Generator) -> torch.Tensor:
    """(shadows, records) bool: each shadow IN on ``size`` records, every record IN for as many shadows as any
    other, give or take one (each shadow takes the records with the fewest shadows so far, ties at random)."""
    membership = torch.zeros(shadows, records, dtype=torch.bool)
    counts = torch.zeros(records)
    for row in membership:
        chosen = (counts + torch.rand(records, generator=rng)).topk(size, largest=False).indices
        row[chosen] = True
        counts[chosen] += 1
    return membership


def per_model_normalised(signals: torch.Tensor) -> torch.Tensor:
    """Each model's signals (the last dimension: candidates) less their median, over their interquartile range."""
    quartiles = torch.tensor([0.25, 0.5, 0.75], dtype=signals.dtype)
    low, middle, high = torch.quantile(signals, quartiles, dim=-1, keepdim=True)
    return (signals - middle) / (high - low).clamp_min(_VARIANCE_FLOOR)


def normalised_fit(fit: ShadowFit) -> ShadowFit:
    """``fit`` with the target's and every shadow's signals standardised (``per_model_normalised``)."""
    return ShadowFit(per_model_normalised(fit.target), per_model_normalised(fit.observations), fit.candidate_in)


def masked_gaussian(
    observations: torch.Tensor, mask: torch.Tensor, pooled: bool, center: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-record centre and variance of ``observations`` (shadows, records) where ``mask`` is set.

    ``pooled``: one variance shared by all records (residuals around each record's own mean).
    ``center``: "mean" or "median" (the midpoint of the two middle values for an even count)."""
    weight = mask.double()
    count = weight.sum(0)
    mean = (observations * weight).sum(0) / count.clamp_min(1)
    squared = (observations - mean).square() * weight
    if pooled:
        variance = squared.sum() / (count - 1).clamp_min(0).sum().clamp_min(1)
        variance = variance.expand_as(mean)
    else:
        variance = squared.sum(0) / (count - 1).clamp_min(1)
    if center == "median":
        mean = observations.double().masked_fill(~mask, torch.nan).nanquantile(0.5, dim=0).nan_to_num(0.0)
    return mean, variance.clamp_min(_VARIANCE_FLOOR)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x - mean).square() / variance - 0.5 * variance.log()


def online_scores(fit: ShadowFit, pooled: bool, center: str = "mean") -> torch.Tensor:
    """Log-likelihood ratio of IN over OUT Gaussians, per candidate."""
    if fit.candidate_in is None:
        raise ValueError("online LiRA needs shadows trained with the candidates")
    mean_in, var_in = masked_gaussian(fit.observations, fit.candidate_in, pooled, center)
    mean_out, var_out = masked_gaussian(fit.observations, ~fit.candidate_in, pooled, center)
    return gaussian_log_density(fit.target, mean_in, var_in) - gaussian_log_density(fit.target, mean_out, var_out)


def offline_scores(fit: ShadowFit, pooled: bool, center: str = "mean") -> torch.Tensor:
    """One-sided test statistic against the OUT Gaussian (the OUT shadows of an online fit if it has IN ones)."""
    out = torch.ones_like(fit.observations, dtype=torch.bool) if fit.candidate_in is None else ~fit.candidate_in
    mean_out, var_out = masked_gaussian(fit.observations, out, pooled, center)
    return (fit.target - mean_out) / var_out.sqrt()


@ATTACKS.register("mia-lira")
class LiRA(Attack):
    """Likelihood-ratio membership inference with shadow fine-tunes."""

    vantage = Vantage.EXTERNAL
    family = AttackFamily.MIA
    access = frozenset({Access.LOGITS, Access.WEIGHTS, Access.GRADIENTS})  # shadows are fine-tuned locally

    @dataclass(frozen=True, kw_only=True)
    class Config:
        shadows: int = doc("number of shadow models to train (even; at least 4 online, 2 offline)", 8)
        online: bool = doc(
            "online LiRA (shadows trained with and without each candidate) or offline (without only)", True
        )
        variance: Literal["auto", "per-example", "global"] = doc(
            f"Gaussian variances per candidate, pooled over candidates, or auto (global below {GLOBAL_VARIANCE_BELOW} shadows)",
            "auto",
        )
        center: Literal["mean", "median"] = doc(
            "per-candidate centre of the shadow signals (the paper's code: median)", "mean"
        )
        shadow_records: int = doc(
            "records each shadow trains on; 0: half the pool (the paper's design). Set it to the target's training-set "
            "size (the federation's clients x members each) to train shadows like the target; online, the pool is "
            "then the candidates alone, and each is IN for shadows x shadow_records / candidates shadows", 0
        )
        normalise: bool = doc(
            "standardise each model's signals over the candidates (less its median, over its interquartile range) "
            "before fitting: a shift or spread a whole shadow or the target shares then moves no candidate's score",
            False,
        )
        federated_shadows: bool = doc(
            "train each shadow through the run's federation (its records dealt to the clients, same rounds, local "
            "steps and aggregation) instead of one central fine-tune at the federation's exposure per record", False
        )

        def __post_init__(self) -> None:
            least = 4 if self.online else 2
            if self.shadows < least or self.shadows % 2:
                raise ValueError(
                    f"shadows must be even and at least {least} for {'online' if self.online else 'offline'} LiRA"
                )
            if self.shadow_records < 0:
                raise ValueError(f"shadow_records must be 0 (half the pool) or a positive count, got {self.shadow_records}")

    def run(self, view: ThreatView, rng: torch.Generator):
        return membership_scores(self.score(self.observe(view, rng)))

    def observe(self, view: ThreatView, rng: torch.Generator) -> ShadowFit:
        """Train the shadows and read the candidates' signal under each of them and under the target."""
        if view.train_shadow is None:
            raise TierAccessError("LiRA needs shadow models, and this vantage cannot train them")
        public = [] if self.config.online and self.config.shadow_records else list(view.auxiliary)
        pool = public + (list(view.candidates) if self.config.online else [])
        if not view.auxiliary and not self.config.online:
            raise UserError("offline LiRA needs auxiliary records to train shadow models on")
        membership = self._membership(len(pool), rng)
        observations = torch.stack([self._shadow_signal(view, pool, keep, rng) for keep in membership]).double()
        target = confidence_signal(view.final_model, view.candidates).double()
        candidate_in = membership[:, len(public) :] if self.config.online else None
        return ShadowFit(target, observations, candidate_in)

    def _membership(self, records: int, rng: torch.Generator) -> torch.Tensor:
        """Which pool records each shadow trains on: random halves, or ``shadow_records`` each, balanced."""
        shadows, size = self.config.shadows, self.config.shadow_records
        if not size:
            return balanced_membership(shadows, records, rng)
        if size >= records:
            raise UserError(f"mia-lira: shadow_records ({size}) must be fewer than the {records} records of the shadow pool")
        if self.config.online and shadows * size < 2 * records:
            raise UserError(
                f"mia-lira: online with shadow_records {size} over {records} candidates needs shadows >= "
                f"{-(-2 * records // size)} (each candidate IN for at least two shadows), got {shadows}"
            )
        return sized_membership(shadows, records, size, rng)

    def score(self, fit: ShadowFit) -> torch.Tensor:
        pooled, center = self.pooled(), self.config.center
        if self.config.normalise:
            fit = normalised_fit(fit)
        return online_scores(fit, pooled, center) if self.config.online else offline_scores(fit, pooled, center)

    def pooled(self) -> bool:
        return {"global": True, "per-example": False, "auto": self.config.shadows < GLOBAL_VARIANCE_BELOW}[
            self.config.variance
        ]

    def _shadow_signal(self, view: ThreatView, pool: list, keep: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        how = {"federated": True} if self.config.federated_shadows else {}  # a trainer may offer central only
        shadow = view.train_shadow([pool[i] for i in keep.nonzero().flatten().tolist()], derived_generator(rng), **how)
        return confidence_signal(shadow, view.candidates)
