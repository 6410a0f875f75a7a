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
tokens of a batch, averaged over batches. ``inversion.recovered`` (Table 4's inversion headline) is the
fraction of true sequences reconstructed better than any guess without the update could do for that
sequence (``recovered_values``).

Key convention: client ``AGGREGATE_CLIENT`` (-1) means "the whole round": an attack on the aggregate
update is compared with the union of every client's batch in that round.

Floor (``floor_values``): each metric row carries, in its ``extra``, the ``floor`` a failed attack
scores: the better of guessing other records of the task and guessing its template, scored exactly
as a reconstruction, from test records the attacker never sees. On templated data that is far above 0
(ROUGE-1 0.56-0.60), so Table 4 measures an attack's advantage over it.

Confidence intervals are 95% percentile intervals of a bootstrap over slots (over batches for token
F1) with a fixed seed, so scoring is deterministic.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import torch

from bench.api.predictions import Reconstruction
from bench.api.transcript import GroundTruth
from bench.api.vocabulary import AGGREGATE_CLIENT
from bench.scoring.score import Metric, scorer_for

if TYPE_CHECKING:  # rouge-score loads when a text is first scored
    from rouge_score.rouge_scorer import RougeScorer

T = TypeVar("T")
"""A reconstructed or true item (a text, a token sequence)."""
U = TypeVar("U")
"""A true item as the similarity reads it (the item itself, or its index)."""

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


_TEXT_SCORERS: dict[str, RougeScorer] = {}


def _text_scorer(variant: str) -> RougeScorer:
    if variant not in _TEXT_SCORERS:
        from rouge_score import rouge_scorer

        _TEXT_SCORERS[variant] = rouge_scorer.RougeScorer([variant], use_stemmer=False)
    return _TEXT_SCORERS[variant]


# --- matching -------------------------------------------------------------------------------------
def matched_slots(
    reconstructed: Sequence[T], truth: Sequence[U], similarity: Callable[[T, U], float]
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
    values = slot_values(pairs, prediction.decode)
    floors = floor_values(pairs, truth.held_out, prediction.decode)
    metrics = [_metric(name, slots, floors.get(name)) for name, slots in values.items()]
    recovered = recovered_values(pairs, truth.held_out)
    if recovered is not None:
        metrics.append(_metric(RECOVERED, *recovered))
    return metrics


def slot_values(pairs: list[tuple[list[Tokens], list[Tokens]]], decode: Callable[[Tokens], str] | None) -> dict[str, list[float]]:
    """Per-metric values: matched slots for the sequence metrics, one value per batch for token F1."""
    values = {name: [v for recon, true in pairs for v in matched_slots(recon, true, similarity)]
              for name, similarity in SEQUENCE_METRICS.items()}
    values["inversion.token_f1"] = [token_f1([t for s in recon for t in s], [t for s in true for t in s])
                                    for recon, true in pairs]
    if decode is not None:
        texts = [([decode(s) for s in recon], [decode(s) for s in true]) for recon, true in pairs]
        for name, similarity in TEXT_METRICS.items():
            values[name] = [v for recon, true in texts for v in matched_slots(recon, true, similarity)]
    return values


# --- the floor: what an attack that learned nothing from the update scores -------------------------
FLOOR_DRAWS = 4
"""Draws of other records guessed per batch (the floor's mean is over them)."""


def floor_values(pairs: list[tuple[list[Tokens], list[Tokens]]], held_out: Sequence[Tokens],
                 decode: Callable[[Tokens], str] | None) -> dict[str, float]:
    """Per metric, the best of two guesses that need no update, scored exactly as a reconstruction:
    other records of the task (``FLOOR_DRAWS`` draws of as many held-out records as each batch holds)
    and the task's template (the held-out record closest, by token ROUGE-1, to the other held-out
    records: the medoid, which an attacker with public data from the distribution could compute),
    guessed once per true sequence. Templated data score well above 0 this way (ROUGE-1 0.56-0.60
    on the synthetic tasks), so success is measured against this floor, not against 0. The guesses
    come from ``GroundTruth.held_out`` (test records no client trained on, never in a threat view)."""
    held = [list(h) for h in held_out if len(h)]
    if not held or not pairs:
        return {}
    generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    draws = []
    for _ in range(FLOOR_DRAWS):
        order = torch.randperm(len(held), generator=generator).tolist()
        guesses, at = [], 0
        for _, true in pairs:
            guesses.append(([held[order[(at + j) % len(held)]] for j in range(len(true))], true))
            at += len(true)
        draws.append(slot_values(guesses, decode))
    template = _medoid(held)
    draws_mean = {name: sum(_mean(d[name]) for d in draws) / len(draws) for name in draws[0]}
    templated = slot_values([([template] * len(true), true) for _, true in pairs], decode)
    return {name: max(draws_mean[name], _mean(templated[name])) for name in draws_mean}


# --- records recovered beyond guessing: Table 4's inversion headline --------------------------------
RECOVERED = "inversion.recovered"
"""Fraction of the true sequences whose reconstruction beats, in token ROUGE-1, every guess an attacker
without the update could make for that very sequence: each held-out record of the task (test records no
client trained on, the floor's pool) and the bare template (``_consensus``). Taking the best guess *for
that sequence*, which no attacker could pick without the truth, makes the rule conservative and its
failure level 0 by construction. Why a per-record count rather than the batch's mean ROUGE-1 against the mean
floor: an attack that recovers one note of two verbatim and returns nothing for the other scores a mean
ROUGE-1 of 0.50, below the 0.57 of guessing the template for both, so a mean-based verdict reads a
defense that lets half the batch through as one that stops the attack (dp-central against DAGER,
issue 15). Counted per record, that batch is half recovered. Slots are ``max(n, m)`` as for the other
sequence metrics (surplus reconstructions count 0), under the matching that recovers the most records."""


def recovered_values(pairs: list[tuple[list[Tokens], list[Tokens]]], held_out: Sequence[Tokens]) -> tuple[list[float], float] | None:
    """Per slot, 1 when the matched reconstruction beats its true sequence's best guess, with the metric's
    failure level, 0 by construction: no guess can beat the best of all guesses. None without held-out
    records (no guesses to beat)."""
    held = [list(h) for h in held_out if len(h)]
    if not held or not pairs:
        return None
    guesses = [*held, _consensus(_medoid(held), held)]
    slots: list[float] = []
    for recon, true in pairs:
        best = [max(rouge_n(g, t, 1) for g in guesses) for t in true]
        slots += matched_slots(recon, list(range(len(true))), _beats_best_guess(true, best))
    return slots, 0.0


def _medoid(records: list[list[int]]) -> list[int]:
    if len(records) == 1:
        return records[0]
    totals = [sum(rouge_n(a, b, 1) for j, b in enumerate(records) if j != i) for i, a in enumerate(records)]
    return records[max(range(len(records)), key=totals.__getitem__)]


def _consensus(template: list[int], held: list[list[int]]) -> list[int]:
    """The template's tokens that at least half the held-out records contain, in the template's order: the
    bare template. It outscores any whole record in ROUGE-1 F1 against a templated note (a record's own
    private tokens cost it precision), so without it a reconstruction of the template alone would count."""
    shared = Counter(t for record in held for t in set(record))
    return [t for t in template if 2 * shared[t] >= len(held)]


def _beats_best_guess(true: list[Tokens], best: list[float]) -> Callable[[Tokens, int], float]:
    return lambda candidate, i: float(rouge_n(candidate, true[i], 1) > best[i] + 1e-9)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _metric(name: str, values: list[float], floor: float | None = None) -> Metric:
    extra = {} if floor is None else {"floor": round(float(floor), 6)}
    if not values:
        return Metric(name, math.nan, extra=extra)
    data = torch.tensor(values, dtype=torch.float64)
    low, high = _bootstrap_interval(data)
    return Metric(name, float(data.mean()), ci_low=low, ci_high=high, extra=extra)


def _bootstrap_interval(data: torch.Tensor) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    picks = torch.randint(data.numel(), (BOOTSTRAP_RESAMPLES, data.numel()), generator=generator)
    means = data[picks].mean(dim=1)
    return float(torch.quantile(means, 0.025)), float(torch.quantile(means, 0.975))
