"""The inversion floor (bench/scoring/inversion.py): what an attack that learned nothing scores."""

from __future__ import annotations

import pytest

from bench.api.predictions import Reconstruction
from bench.api.transcript import GroundTruth
from bench.scoring.inversion import floor_values
from bench.scoring.score import Metric, score

TEMPLATE = [10, 11, 12, 13, 14, 15]


def record(i: int) -> list[int]:
    """A templated record: the shared template, then two private tokens."""
    return TEMPLATE + [100 + 2 * i, 101 + 2 * i]


def truth_with(batch: list[list[int]], held_out: list[list[int]]) -> GroundTruth:
    return GroundTruth(client_batches={(0, 0): batch}, held_out=held_out)


def test_floor_is_emitted_on_every_metric_and_below_a_perfect_reconstruction():
    batch = [record(0), record(1)]
    truth = truth_with(batch, [record(i) for i in range(10, 30)])
    perfect = score(Reconstruction(sequences={(0, 0): batch}), truth)
    assert perfect and all("floor" in m.extra for m in perfect)
    for m in perfect:
        assert m.value == 1.0 and m.extra["floor"] < m.value, m.name
    by_name = {m.name: m.extra["floor"] for m in perfect}
    # another record shares the 6-token template of 8 tokens: ROUGE-1 6/8, ROUGE-2 5/7, never exact
    assert by_name["inversion.rouge1"] == pytest.approx(6 / 8)
    assert by_name["inversion.rouge2"] == pytest.approx(5 / 7)
    assert by_name["inversion.exact"] == 0.0


def test_failed_attack_scores_below_its_floor_and_the_floor_ignores_the_attack():
    batch = [record(0)]
    truth = truth_with(batch, [record(i) for i in range(10, 20)])
    empty = {m.name: m for m in score(Reconstruction(sequences={(0, 0): []}), truth)}
    guessed = {m.name: m for m in score(Reconstruction(sequences={(0, 0): [record(5)]}), truth)}
    assert empty["inversion.rouge1"].value == 0.0 < empty["inversion.rouge1"].extra["floor"]
    # guessing another record is exactly the floor; the floor does not depend on what was predicted
    assert guessed["inversion.rouge1"].value == pytest.approx(guessed["inversion.rouge1"].extra["floor"])
    assert empty["inversion.rouge1"].extra == guessed["inversion.rouge1"].extra


def test_template_guess_raises_the_floor_when_records_share_little_pairwise():
    # held-out records that each share the template with the truth but differ among themselves more
    # than the medoid does: the floor is the better of the two guesses
    truth_seq = TEMPLATE + [7, 8]
    halves = [TEMPLATE[:3] + [200 + 10 * i + j for j in range(5)] for i in range(3)]
    halves += [TEMPLATE[3:] + [400 + 10 * i + j for j in range(5)] for i in range(3)]
    held = halves + [TEMPLATE + [300, 301]]  # the medoid: it shares 3 tokens with every other record
    floors = floor_values([([], [truth_seq])], held, None)
    assert floors["inversion.rouge1"] == pytest.approx(6 / 8)  # the medoid (full template) wins


def test_no_held_out_records_no_floor():
    truth = truth_with([record(0)], [])
    assert all("floor" not in m.extra for m in score(Reconstruction(sequences={(0, 0): [record(0)]}), truth))


def test_metric_extra_reaches_the_result_row(tmp_path):
    from bench.engine.runner import RunResult, _rows
    from tests.helpers import make_scenario

    scenario = make_scenario(tmp_path, attacks=["inversion-dager"], seeds=[0])
    result = RunResult(metrics=[("inversion-dager", Metric("inversion.rouge1", 0.2, extra={"floor": 0.58}))])
    rows = _rows(scenario, 0, result, 1.0)
    row = next(r for r in rows if r.metric == "inversion.rouge1")
    assert row.extra["floor"] == 0.58
    assert "floor" not in next(r for r in rows if r.metric == "cost.wall_s").extra


# --- inversion.recovered: records reconstructed beyond guessing (Table 4's inversion headline) -------
def test_half_a_batch_recovered_verbatim_counts_as_half_though_its_mean_rouge_is_below_the_floor():
    # the dp-central case of issue 15: one note of two recovered exactly, nothing for the other
    batch = [record(0), record(1)]
    truth = truth_with(batch, [record(i) for i in range(10, 30)])
    half = {m.name: m for m in score(Reconstruction(sequences={(0, 0): [record(0)]}), truth)}
    assert half["inversion.rouge1"].value < half["inversion.rouge1"].extra["floor"]  # the old headline's blind spot
    assert half["inversion.recovered"].value == pytest.approx(0.5)
    assert half["inversion.recovered"].extra["floor"] == 0.0


def test_guessing_the_template_or_another_record_recovers_nothing():
    batch = [record(0), record(1)]
    truth = truth_with(batch, [record(i) for i in range(10, 30)])
    for guess in ([record(12), record(15)], [TEMPLATE, TEMPLATE], []):
        metrics = {m.name: m.value for m in score(Reconstruction(sequences={(0, 0): guess}), truth)}
        assert metrics["inversion.recovered"] == 0.0, guess


def test_a_private_token_beyond_the_template_is_a_recovery_and_surplus_guesses_cannot_buy_one():
    batch = [record(0)]
    truth = truth_with(batch, [record(i) for i in range(10, 30)])
    partial = TEMPLATE + [100, 999]  # the template and one of the two private tokens
    assert {m.name: m.value for m in score(Reconstruction(sequences={(0, 0): [partial]}), truth)}["inversion.recovered"] == 1.0
    # ten guesses for a batch of one: the right one among them is one slot of ten
    many = [record(i) for i in range(40, 49)] + [record(0)]
    assert {m.name: m.value for m in score(Reconstruction(sequences={(0, 0): many}), truth)}["inversion.recovered"] == pytest.approx(0.1)


def test_no_held_out_records_no_recovered_metric():
    truth = truth_with([record(0)], [])
    assert "inversion.recovered" not in {m.name for m in score(Reconstruction(sequences={(0, 0): [record(0)]}), truth)}
