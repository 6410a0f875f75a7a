"""Extraction metrics: how much of the clients' training data the final model reproduces.

From an ``Extraction`` prediction and the membership flags:
- ``extraction.rate``: hits / trials over the member candidates (records some client trained on),
  with a 95% Wilson score interval (Wilson 1927). Its row's ``floor`` is the base model's rate on the
  same probes (``extraction.base_rate``): what the attack reaches when fine-tuning taught nothing.
  The interval treats every probed item as an independent trial; items of one record are
  correlated, so it is somewhat too narrow when records carry several items.
- ``extraction.nonmember_rate``: the same on held-out records of the same distribution (the control:
  what the model produces from the distribution, not from memory).
- graded similarities (``extraction.lcs``, ``extraction.rouge_l``): member means, floor = base model's.
- canaries: ``extraction.canary_rate`` (the secret appears in the greedy completion of the canary's
  prefix), and per inserted repetition count ``extraction.canary_rate@r<n>`` with the mean number of
  trained copies ``extraction.canary_copies@r<n>``; floor = the base model's rate.
  Approximate extraction (``extraction.canary_partial`` and ``...@r<n>``): the completion holds a
  contiguous run of at least half the secret's characters (longest common substring, as the prefix
  attack's ``lcs``), so a model that recalls part of a secret counts; floor = the base model's rate
  (two random 6-digit strings share 3 consecutive digits about 1.6% of the time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from difflib import SequenceMatcher

import torch

from bench.api.predictions import Extraction
from bench.api.transcript import Canary, GroundTruth
from bench.scoring.score import Metric, scorer_for

Z95 = 1.959963984540054


def wilson(successes: float, trials: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default); (0, 1) for no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact ends: no rounding residue at 0 or 1
    high = 1.0 if successes >= trials else min(1.0, centre + half)
    return low, high


def _rate(name: str, hits: float, trials: float, floor: float | None = None, **extra: float) -> Metric:
    low, high = wilson(hits, trials)
    kept = {"trials": trials, **extra}
    if floor is not None:
        kept["floor"] = floor
    return Metric(name, hits / trials, ci_low=low, ci_high=high, extra=kept)


def _ratio(hits: torch.Tensor, trials: torch.Tensor) -> float:
    total = float(trials.sum())
    return float(hits.sum()) / total if total else math.nan


@scorer_for(Extraction)
def score_extraction(prediction: Extraction, truth: GroundTruth) -> list[Metric]:
    metrics = _candidate_metrics(prediction, truth)
    metrics += canary_metrics(prediction.canary_completions, prediction.base_canary_completions, truth)
    metrics += [Metric(f"extraction.{key}", float(value)) for key, value in prediction.extra.items()]
    return metrics


def _candidate_metrics(p: Extraction, truth: GroundTruth) -> list[Metric]:
    hits, trials, base = (torch.as_tensor(t, dtype=torch.float64).reshape(-1) for t in (p.hits, p.trials, p.base_hits))
    if hits.numel() == 0:
        return []
    flags = torch.as_tensor(truth.member_flags).reshape(-1).bool()
    if flags.numel() != hits.numel():
        raise ValueError(f"{hits.numel()} extraction outcomes for {flags.numel()} membership flags")
    members, others = flags, ~flags
    if float(trials[members].sum()) == 0:
        return []
    floor = _ratio(base[members], trials[members])
    extra = {"chance": p.chance} if p.chance is not None else {}
    out = [_rate("extraction.rate", float(hits[members].sum()), float(trials[members].sum()), floor, **extra),
           _rate("extraction.base_rate", float(base[members].sum()), float(trials[members].sum()))]
    if float(trials[others].sum()) > 0:
        out.append(_rate("extraction.nonmember_rate", float(hits[others].sum()), float(trials[others].sum()),
                         _ratio(base[others], trials[others])))
    for key, values in p.graded.items():
        values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        reference = p.base_graded.get(key)
        floor_value = float(torch.as_tensor(reference, dtype=torch.float64).reshape(-1)[members].mean()) \
            if reference is not None else None
        out.append(Metric(f"extraction.{key}", float(values[members].mean()),
                          extra={"floor": floor_value} if floor_value is not None else None))
    return out


def canary_hits(completions: Sequence[str], canaries: Sequence[Canary]) -> list[bool]:
    """Whether each canary's hidden secret appears in the completion of its prefix (an empty secret never does)."""
    return [bool(c.secret) and c.secret in text for c, text in zip(canaries, completions)]


def canary_partial_hits(completions: Sequence[str], secrets: Sequence[str]) -> list[bool]:
    """Whether each completion holds a contiguous run of at least half its canary's secret."""
    out = []
    for secret, text in zip(secrets, completions, strict=True):
        run = SequenceMatcher(None, secret, text, autojunk=False).find_longest_match(0, len(secret), 0, len(text)).size
        out.append(bool(secret) and 2 * run >= len(secret))
    return out


def canary_metrics(completions: Sequence[str], base: Sequence[str], truth: GroundTruth) -> list[Metric]:
    if not completions or not truth.canaries:
        return []
    found = canary_hits(completions, truth.canaries)
    floor_found = canary_hits(base, truth.canaries) if base else [False] * len(found)
    secrets = [str(c.secret) for c in truth.canaries]
    partial = canary_partial_hits(completions, secrets)
    floor_partial = canary_partial_hits(base, secrets) if base else [False] * len(found)
    out = [_rate("extraction.canary_rate", sum(found), len(found), sum(floor_found) / len(found)),
           _rate("extraction.canary_partial", sum(partial), len(partial), sum(floor_partial) / len(partial))]
    copies = truth.canary_copies or [None] * len(found)
    levels = sorted({c.repeats for c in truth.canaries})
    if levels != [1]:  # canaries inserted more than once: the rate per repetition count
        for level in levels:
            index = [i for i, c in enumerate(truth.canaries) if c.repeats == level]
            trained = [copies[i] for i in index if copies[i] is not None]
            out.append(_rate(f"extraction.canary_rate@r{level}", sum(found[i] for i in index), len(index),
                             sum(floor_found[i] for i in index) / len(index)))
            out.append(_rate(f"extraction.canary_partial@r{level}", sum(partial[i] for i in index), len(index),
                             sum(floor_partial[i] for i in index) / len(index)))
            if trained:
                out.append(Metric(f"extraction.canary_copies@r{level}", sum(trained) / len(trained)))
    return out
