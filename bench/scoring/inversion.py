"""Gradient-inversion metrics: ROUGE-1/2 F1 under optimal matching, exact recovery, token F1.

The main metrics work on token ids (an n-gram is a tuple of ids), so no tokenizer is involved and a
reconstruction is judged on exactly what the client trained on. Beside them, when the attack passed
its public tokenizer's decoding (``Reconstruction.decode``), ``inversion.rouge1_text`` and
``inversion.rouge2_text`` are word-level ROUGE-1/2 F1 on the decoded text, computed by the
``rouge-score`` package (its default tokenisation: lower case, alphanumeric words, no stemming), the
way LAMP and DAGER report theirs, so that our figures can be set beside their tables. A word cut into
several tokens counts once, and a wrong token inside it loses the whole word, so text ROUGE is not
token ROUGE. Matching, slots and intervals are as for the token metrics (DAGER's decoder evaluation
matches each reference to its best prediction, allowing repeats; ours stays one-to-one).

Per attacked batch (a ``(round, client)`` key of ``Reconstruction.sequences``) the reconstructed
sequences are matched one-to-one to the true ones (``GroundTruth.client_batches``) by the Hungarian
algorithm (``scipy.optimize.linear_sum_assignment``), maximising the metric being reported (each
ROUGE variant and exact match gets its own optimal matching, as in LAMP/DAGER's evaluation). The
batch contributes ``max(n_true, n_reconstructed)`` slots: unmatched true sequences and surplus
reconstructions both count 0, so guessing more sequences than the batch held cannot raise a score.
``inversion.exact`` is therefore the fraction of true sequences recovered token for token (when the
attack returns at most as many sequences as the batch held). Slots are pooled over every attacked
batch. ``inversion.token_f1`` is the bag-of-tokens (multiset) F1 of all reconstructed versus all true
tokens of a batch, averaged over batches.

Key convention: client ``AGGREGATE_CLIENT`` (-1) means "the whole round": an attack on the aggregate
update is compared with the union of every client's batch in that round.

Confidence intervals are 95% percentile intervals of a bootstrap over slots (over batches for token
F1) with a fixed seed, so scoring is deterministic.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bench.api.predictions import Reconstruction
from bench.api.transcript import GroundTruth
from bench.api.vocabulary import AGGREGATE_CLIENT
from bench.scoring.score import Metric, scorer_for

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0

Tokens = Sequence[int]


# --- per-pair similarities ------------------------------------------------------------------------
def ngrams(tokens: Tokens, n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(candidate: Tokens, reference: Tokens, n: int) -> float:
    """ROUGE-N F1 (Lin 2004) on token ids: clipped n-gram overlap; 0 when either side has no n-gram."""
    cand, ref = ngrams(list(candidate), n), ngrams(list(reference), n)
    overlap = sum((cand & ref).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(cand.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def exact_match(candidate: Tokens, reference: Tokens) -> float:
    return float(list(candidate) == list(reference))


def token_f1(candidate_tokens: Tokens, reference_tokens: Tokens) -> float:
    """Multiset F1 of two bags of tokens."""
    cand, ref = Counter(candidate_tokens), Counter(reference_tokens)
    overlap = sum((cand & ref).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(cand.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def rouge_text(candidate: str, reference: str, variant: str) -> float:
    """Word-level ROUGE F1 (``variant`` 'rouge1' or 'rouge2') of two texts, by the rouge-score package."""
    return _text_scorer(variant).score(reference, candidate)[variant].fmeasure


_TEXT_SCORERS: dict[str, Any] = {}


def _text_scorer(variant: str) -> Any:
    if variant not in _TEXT_SCORERS:
        from rouge_score import rouge_scorer

        _TEXT_SCORERS[variant] = rouge_scorer.RougeScorer([variant], use_stemmer=False)
    return _TEXT_SCORERS[variant]


# --- matching -------------------------------------------------------------------------------------
def matched_slots(
    reconstructed: Sequence[Any], truth: Sequence[Any], similarity: Callable[[Any, Any], float]
) -> list[float]:
    """Similarity of each slot under the optimal one-to-one matching; ``max(n, m)`` slots."""
    slots = max(len(reconstructed), len(truth))
    if not reconstructed or not truth:
        return [0.0] * slots
    table = torch.tensor([[similarity(r, t) for t in truth] for r in reconstructed], dtype=torch.float64)
    rows, cols = _maximum_assignment(table)
    values = [float(table[r, c]) for r, c in zip(rows, cols)]
    return values + [0.0] * (slots - len(values))


def _maximum_assignment(table: torch.Tensor) -> tuple[list[int], list[int]]:
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # greedy fallback: exact for the 0/1 and near-diagonal tables seen in practice
        return _greedy_assignment(table)
    rows, cols = linear_sum_assignment(table.numpy(), maximize=True)
    return rows.tolist(), cols.tolist()


def _greedy_assignment(table: torch.Tensor) -> tuple[list[int], list[int]]:
    work, rows, cols = table.clone(), [], []
    for _ in range(min(table.shape)):
        flat = int(torch.argmax(work))
        r, c = divmod(flat, work.shape[1])
        rows.append(r)
        cols.append(c)
        work[r, :] = -math.inf
        work[:, c] = -math.inf
    return rows, cols


# --- scorer ---------------------------------------------------------------------------------------
def truth_for(key: tuple[int, int], truth: GroundTruth) -> list[Tokens] | None:
    """True sequences of one attacked batch; the union of the round's batches for the aggregate key."""
    round_index, client = key
    if client != AGGREGATE_CLIENT:
        return truth.client_batches.get(key)
    batches = [seqs for (r, _), seqs in sorted(truth.client_batches.items()) if r == round_index]
    return [s for seqs in batches for s in seqs] if batches else None


SEQUENCE_METRICS: dict[str, Callable[[Tokens, Tokens], float]] = {
    "inversion.rouge1": lambda c, r: rouge_n(c, r, 1),
    "inversion.rouge2": lambda c, r: rouge_n(c, r, 2),
    "inversion.exact": exact_match,
}
TEXT_METRICS: dict[str, Callable[[str, str], float]] = {
    "inversion.rouge1_text": lambda c, r: rouge_text(c, r, "rouge1"),
    "inversion.rouge2_text": lambda c, r: rouge_text(c, r, "rouge2"),
}


@scorer_for(Reconstruction)
def score_reconstruction(prediction: Reconstruction, truth: GroundTruth) -> list[Metric]:
    pairs = [(list(map(list, recon)), truth_for(key, truth)) for key, recon in sorted(prediction.sequences.items())]
    pairs = [(recon, [list(t) for t in true]) for recon, true in pairs if true is not None]
    metrics = []
    for name, similarity in SEQUENCE_METRICS.items():
        slots = [v for recon, true in pairs for v in matched_slots(recon, true, similarity)]
        metrics.append(_metric(name, slots))
    per_batch = [token_f1([t for s in recon for t in s], [t for s in true for t in s]) for recon, true in pairs]
    metrics.append(_metric("inversion.token_f1", per_batch))
    if prediction.decode is not None:
        texts = [([prediction.decode(s) for s in recon], [prediction.decode(s) for s in true]) for recon, true in pairs]
        for name, similarity in TEXT_METRICS.items():
            slots = [v for recon, true in texts for v in matched_slots(recon, true, similarity)]
            metrics.append(_metric(name, slots))
    return metrics


def _metric(name: str, values: list[float]) -> Metric:
    if not values:
        return Metric(name, math.nan)
    data = torch.tensor(values, dtype=torch.float64)
    low, high = _bootstrap_interval(data)
    return Metric(name, float(data.mean()), ci_low=low, ci_high=high)


def _bootstrap_interval(data: torch.Tensor) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    picks = torch.randint(data.numel(), (BOOTSTRAP_RESAMPLES, data.numel()), generator=generator)
    means = data[picks].mean(dim=1)
    return float(torch.quantile(means, 0.025)), float(torch.quantile(means, 0.975))
