"""Oracle tests for the gradient-inversion scorer (bench/scoring/inversion.py)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.api.predictions import Reconstruction, text_decoder
from bench.api.transcript import GroundTruth
from bench.scoring.inversion import (
    AGGREGATE_CLIENT,
    matched_slots,
    rouge_n,
    token_f1,
    truth_for,
)
from bench.scoring.score import score


def by_name(metrics):
    return {m.name: m for m in metrics}


def test_rouge_hand_computed():
    # candidate 1 2 3 4 vs reference 1 2 4: unigram overlap 3 -> P 3/4, R 3/3 -> F1 6/7.
    assert rouge_n([1, 2, 3, 4], [1, 2, 4], 1) == pytest.approx(6 / 7)
    # bigrams: cand {12, 23, 34}, ref {12, 24}: overlap 1 -> P 1/3, R 1/2 -> F1 0.4.
    assert rouge_n([1, 2, 3, 4], [1, 2, 4], 2) == pytest.approx(0.4)
    # clipped counts: cand 5 5 5 vs ref 5 7: overlap min(3, 1) = 1 -> P 1/3, R 1/2.
    assert rouge_n([5, 5, 5], [5, 7], 1) == pytest.approx(0.4)
    assert rouge_n([1], [1], 2) == 0.0  # no bigram on either side
    assert rouge_n([], [1, 2], 1) == 0.0


def test_rouge_agrees_with_rouge_score_package():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=False)
    generator = torch.Generator().manual_seed(3)
    for _ in range(40):
        cand = torch.randint(0, 9, (int(torch.randint(1, 12, (1,), generator=generator)),), generator=generator)
        ref = torch.randint(0, 9, (int(torch.randint(1, 12, (1,), generator=generator)),), generator=generator)
        expected = scorer.score(" ".join(map(str, ref.tolist())), " ".join(map(str, cand.tolist())))
        assert rouge_n(cand.tolist(), ref.tolist(), 1) == pytest.approx(expected["rouge1"].fmeasure)
        assert rouge_n(cand.tolist(), ref.tolist(), 2) == pytest.approx(expected["rouge2"].fmeasure)


def test_token_f1_is_multiset():
    # cand {1, 1, 2}, ref {1, 3}: overlap 1 -> P 1/3, R 1/2 -> 0.4
    assert token_f1([1, 1, 2], [1, 3]) == pytest.approx(0.4)


def test_matching_is_optimal_not_greedy():
    # Greedy on the first row would take (0, 0) = 0.9 and leave (1, 1) = 0.0 -> 0.9 total;
    # the optimum is (0, 1) + (1, 0) = 0.8 + 0.8.
    table = {("a", "x"): 0.9, ("a", "y"): 0.8, ("b", "x"): 0.8, ("b", "y"): 0.0}
    slots = matched_slots(["a", "b"], ["x", "y"], lambda r, t: table[(r, t)])
    assert sorted(slots) == pytest.approx([0.8, 0.8])


def test_surplus_reconstructions_count_as_misses():
    slots = matched_slots([[1, 2], [3, 4], [5, 6]], [[1, 2]], lambda r, t: float(r == t))
    assert sorted(slots) == [0.0, 0.0, 1.0]
    assert matched_slots([], [[1], [2]], lambda r, t: 1.0) == [0.0, 0.0]


def test_scorer_exact_and_rouge_over_batches():
    truth = GroundTruth(client_batches={(0, 0): [[1, 2, 3], [4, 5, 6]], (0, 1): [[7, 8, 9]]})
    # batch (0, 0): both recovered, in swapped order; batch (0, 1): one token wrong.
    prediction = Reconstruction(sequences={(0, 0): [[4, 5, 6], [1, 2, 3]], (0, 1): [[7, 8, 0]]})
    metrics = by_name(score(prediction, truth))
    assert metrics["inversion.exact"].value == pytest.approx(2 / 3)
    assert metrics["inversion.rouge1"].value == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert metrics["inversion.rouge2"].value == pytest.approx((1 + 1 + 1 / 2) / 3)
    assert metrics["inversion.token_f1"].value == pytest.approx((1 + 2 / 3) / 2)
    ci = metrics["inversion.rouge1"]
    assert ci.ci_low <= ci.value <= ci.ci_high


def test_empty_reconstruction_scores_zero_and_unattacked_batches_are_ignored():
    truth = GroundTruth(client_batches={(0, 0): [[1, 2]], (1, 0): [[3, 4]]})
    metrics = by_name(score(Reconstruction(sequences={(0, 0): []}), truth))
    assert metrics["inversion.exact"].value == 0.0
    assert metrics["inversion.token_f1"].value == 0.0
    nothing = by_name(score(Reconstruction(sequences={}), truth))
    assert math.isnan(nothing["inversion.rouge1"].value)


def test_aggregate_key_is_union_of_round():
    truth = GroundTruth(client_batches={(0, 0): [[1, 2]], (0, 3): [[3, 4]], (1, 0): [[9]]})
    assert truth_for((0, AGGREGATE_CLIENT), truth) == [[1, 2], [3, 4]]
    metrics = by_name(score(Reconstruction(sequences={(0, AGGREGATE_CLIENT): [[3, 4], [1, 2]]}), truth))
    assert metrics["inversion.exact"].value == 1.0


# --- word-level ROUGE on decoded text ----------------------------------------------------------------
PIECES = {0: "the", 1: " ca", 2: "t", 3: "r", 4: " sat", 5: " on", 6: " a", 7: " mat", 8: " The", 9: ","}


def decode(ids):
    return "".join(PIECES[i] for i in ids)


def test_text_rouge_is_word_level_not_token_level():
    # truth "the cat sat" = ids 0 1 2 4 (the word "cat" is two tokens); prediction "the car sat" =
    # 0 1 3 4. Tokens: 3 of 4 ids match -> ROUGE-1 3/4; bigrams {01, 12, 24} vs {01, 13, 34}: 1 of 3.
    # Words: {the, cat, sat} vs {the, car, sat}: 2 of 3 -> 2/3; bigrams {the cat, cat sat} vs
    # {the car, car sat}: 0.
    truth = GroundTruth(client_batches={(0, 0): [[0, 1, 2, 4]]})
    metrics = by_name(score(Reconstruction(sequences={(0, 0): [[0, 1, 3, 4]]}, decode=decode), truth))
    assert metrics["inversion.rouge1"].value == pytest.approx(3 / 4)
    assert metrics["inversion.rouge2"].value == pytest.approx(1 / 3)
    assert metrics["inversion.rouge1_text"].value == pytest.approx(2 / 3)
    assert metrics["inversion.rouge2_text"].value == pytest.approx(0.0)


def test_text_rouge_hand_computed_with_matching_and_slots():
    # batch (0, 0): "the cat sat on the mat" vs predicted "the cat sat on a mat": unigrams: ref the x2,
    # cat, sat, on, mat (6), cand the, cat, sat, on, a, mat (6), clipped overlap 5 -> F1 5/6; bigrams:
    # the cat, cat sat, sat on shared of 5 each -> 3/5. Case and punctuation are not words: "The cat,"
    # equals "the cat". Batch (0, 1): two true sequences, one prediction -> a second, empty slot (0).
    truth = GroundTruth(client_batches={(0, 0): [[0, 1, 2, 4, 5, 8, 7]],  # "the cat sat on The mat"
                                        (0, 1): [[0, 1, 2], [8, 1, 2, 9]]})  # "the cat", " The cat,"
    prediction = Reconstruction(sequences={(0, 0): [[0, 1, 2, 4, 5, 6, 7]], (0, 1): [[8, 1, 2, 9]]}, decode=decode)
    metrics = by_name(score(prediction, truth))
    assert metrics["inversion.rouge1_text"].value == pytest.approx((5 / 6 + 1 + 0) / 3)
    assert metrics["inversion.rouge2_text"].value == pytest.approx((3 / 5 + 1 + 0) / 3)


def test_text_metrics_need_a_decoder():
    truth = GroundTruth(client_batches={(0, 0): [[0, 1, 2]]})
    names = {m.name for m in score(Reconstruction(sequences={(0, 0): [[0, 1, 2]]}), truth)}
    assert "inversion.rouge1" in names and not {"inversion.rouge1_text", "inversion.rouge2_text"} & names


def test_text_decoder_drops_special_tokens():
    class Tokenizer:
        def decode(self, ids, skip_special_tokens=False):
            return "".join(PIECES.get(i, "" if skip_special_tokens else "<eos>") for i in ids)

    assert text_decoder(Tokenizer())([0, 1, 2, 99]) == "the cat"
    assert text_decoder(None) is None
