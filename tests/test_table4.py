"""Table 4: the verdict rule on hand-set advantages, cells from a synthetic grid, the paper comparison."""

from __future__ import annotations

import csv
import dataclasses

import pytest
from report_helpers import poison_run, synthetic_grid

from bench.api.vocabulary import DefenseFamily
from bench.reporting import leaderboard, matrix4, paper4, table4
from bench.reporting.report import table4_markdown, write_table4_csv


@pytest.mark.parametrize(("without", "with_", "expected"), [
    ([0.30, 0.30, 0.30], [0.02, 0.03, 0.01], "mitigates"),      # r ~ 0.93, interval well below 0
    ([0.40, 0.40, 0.40], [0.20, 0.21, 0.19], "partial"),        # r = 0.5: real, short of 0.75
    ([0.40, 0.40, 0.40], [0.35, 0.35, 0.35], "no effect"),      # r = 0.125: real but negligible
    ([0.40, 0.40, 0.40], [0.50, 0.50, 0.50], "no effect"),      # the defense made it worse
    ([0.40, 0.42, 0.38], [0.30, 0.60, 0.05], "inconclusive"),   # r ~ 0.2, interval covers 0 and -m
    ([0.40, 0.10, 0.70], [0.30, 0.40, 0.10], "not applicable"),  # a0's own interval reaches the failure level
    ([0.01, 0.02, 0.03], [0.0, 0.0, 0.0], "not applicable"),    # nothing to mitigate (< MIN_ADVANTAGE)
])
def test_verdict_rule(without, with_, expected):
    label, reduction, reason = table4.verdict(without, with_)
    assert label == expected, reason
    assert (reduction is None) == (expected == "not applicable")


def test_verdict_thresholds_are_inclusive_at_the_boundaries():
    assert table4.verdict([0.4, 0.4], [0.1, 0.1])[0] == "mitigates"   # r = 0.75 exactly, no spread
    assert table4.verdict([0.4, 0.4], [0.3, 0.3])[0] == "partial"     # r = 0.25 exactly


def test_one_paired_seed_has_no_interval_so_it_is_inconclusive():
    assert table4.verdict([0.4], [0.0])[0] == "inconclusive"


@pytest.fixture(scope="module")
def cells():
    board = leaderboard.build(synthetic_grid())
    return {(c.defense, c.role): c for c in table4.build(board, paper=paper4.annotate) if c.method == "lora"}


def test_an_attack_that_never_runs_is_not_applicable_not_incompatible():
    board = leaderboard.build(synthetic_grid())
    (cell,) = [c for c in table4.build(board, paper=paper4.annotate) if c.method == "rlhf"]
    assert (cell.verdict, cell.comparison) == ("not applicable", "not measurable")
    assert "classification" in cell.reason


def test_cells_from_a_synthetic_grid(cells):
    expected = {
        ("dp-local", "mia"): ("mitigates", "agree"),
        ("dp-local", "inversion"): ("partial", "agree"),
        ("secagg", "inversion"): ("mitigates", "agree"),
        ("secagg", "mia"): ("no effect", "not measurable"),        # SecAgg does not claim external MIA
        ("secagg", "byzantine"): ("incompatible", "not measurable"),  # refused: a rule of ours, not a measurement
        ("robust-median", "backdoor"): ("partial", "agree"),
        ("robust-krum", "mia"): ("no effect", "not measurable"),
    }
    got = {key: (cells[key].verdict, cells[key].comparison) for key in expected}
    assert got == expected
    assert "robust needs updates" in cells[("secagg", "byzantine")].reason


def test_cell_numbers_are_paired_means(cells):
    cell = cells[("dp-local", "mia")]
    assert cell.seeds == 3 and cell.attack == "mia-reference"
    assert cell.success_without == pytest.approx(0.80) and cell.success_with == pytest.approx(0.52)
    assert cell.utility_change == pytest.approx(-0.1)
    assert cell.cost_factor == pytest.approx(3.0) and cell.cost_factor_bytes == pytest.approx(1.0)
    assert cell.epsilon == pytest.approx(8.0)


def test_byzantine_advantage_is_measured_against_the_attacker_free_error():
    board = leaderboard.build(synthetic_grid())
    runs, clean = table4._index(board)
    byz = next(r for r in runs[("open-weight", "lora", "fedavg", "none", "byzantine")] if r["seed"] == 0)
    assert table4._advantage(byz, "byzantine", clean) == pytest.approx(0.5 - (1 - 0.9))


def test_byzantine_advantage_prefers_the_exact_clean_twin_when_the_run_has_one():
    board = leaderboard.build(synthetic_grid())
    runs, clean = table4._index(board)
    byz = dict(next(r for r in runs[("open-weight", "lora", "fedavg", "none", "byzantine")] if r["seed"] == 0))
    byz.update({"utility.accuracy": 0.5, "poison.utility_drop": 0.3, "utility_metric": "utility.accuracy"})
    assert table4._advantage(byz, "byzantine", clean) == pytest.approx(byz["poison.asr"] - (1 - 0.8))


def test_paper_marks():
    assert paper4.paper_mark("fft", DefenseFamily.HE)[0] == "applies"
    assert paper4.paper_mark("prompt-tuning", DefenseFamily.DP)[0] == "limited"
    assert paper4.paper_mark("rlhf", DefenseFamily.SECAGG)[0] == "not fully available"
    assert paper4.paper_mark("instruction-tuning", DefenseFamily.ROBUST_AGGREGATION)[0] == "applies"
    cell = table4.Cell(tier="open-weight", method="rlhf", defense="he", role="inversion", attack="a", metric="m", seeds=3,
                       success_without=0.5, success_with=0.0, advantage_without=0.5, advantage_with=0.0, reduction=1.0,
                       failure_level=0.0, change=-0.5, change_low=-0.5, change_high=-0.5, threshold=-0.375,
                       paired_sd=0.0, mde=0.0, mde_goal=0.1,
                       utility_metric="u", utility_without=1.0, utility_with=1.0, utility_change=0.0, cost_factor=2.0,
                       cost_factor_bytes=20.0, epsilon=None, verdict="mitigates", reason="",
                       defense_family=DefenseFamily.HE)
    assert paper4.compare(cell)[0] == "disagree"   # HE ran for RLHF, which the paper says is not fully available


@pytest.mark.parametrize(("method", "defense"), [
    ("lora", "robust-krum"),            # "applies": Krum refused at 4 clients per round (n < 2f + 3)
    ("prompt-tuning", "robust-krum"),   # "limited"
    ("rlhf", "secagg"),                 # "not fully available"
    ("provider-tuning", "dp-local"),    # closed tier: "provider sees the data"
])
def test_a_refused_cell_is_shown_refused_and_never_counted_as_agree_or_disagree(method, defense):
    """Krum's 4-client cells were counted as disagreeing with the paper's "applies" (and as agreeing with
    "limited"): a grid-size refusal is not evidence about the paper's mark (issue 15)."""
    cell = table4.Cell(tier="open-weight", method=method, defense=defense, role="mia", attack="a", metric="m", seeds=0,
                       success_without=None, success_with=None, advantage_without=None, advantage_with=None,
                       reduction=None, failure_level=None, change=None, change_low=None, change_high=None,
                       threshold=None, paired_sd=None, mde=None, mde_goal=None, utility_metric="", utility_without=None,
                       utility_with=None, utility_change=None, cost_factor=None, cost_factor_bytes=None, epsilon=None,
                       verdict="incompatible", reason="robust-krum with f=1 needs at least 2f + 3 = 5 clients per round",
                       defense_family=table4._legacy_family(defense))
    paper4.annotate(cell)
    assert cell.comparison == "not measurable"
    assert "refused" in cell.comparison_note and "2f + 3" in cell.comparison_note
    _, _, [(_, [entry])] = matrix4.layout([dataclasses.asdict(cell)])
    assert matrix4.cell_markdown(entry).startswith(matrix4.SYMBOL["incompatible"] + " ")  # shown refused, not bold


def test_table4_csv_schema_and_markdown(cells, tmp_path):
    path = write_table4_csv(list(cells.values()), tmp_path / "table4.csv")
    with path.open() as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == table4.TABLE4_COLUMNS
    for column in ("method", "defense", "role", "success_without", "success_with", "utility_change", "cost_factor",
                   "verdict", "paper", "comparison", "change_low", "change_high", "mde", "mde_goal", "failure_level"):
        assert column in reader.fieldnames
    assert {r["verdict"] for r in rows} <= set(table4.VERDICTS)
    markdown = table4_markdown(list(cells.values()))
    assert "| open-weight | lora | dp-local | applies |" in markdown
    assert "0.80→0.52 mitigates" in markdown


def _poison_cells(defense: str, declared: dict[str, str] | None) -> list[table4.Cell]:
    """A backdoor cell of ``defense`` against no defense; ``declared``: what its runs stored as the defense's
    family (None: nothing, as a run stored before defenses declared theirs)."""
    rows = []
    for seed, jitter in enumerate((0.0, 0.01, -0.01)):
        rows += poison_run("lora", "none", seed, "poison-replacement", asr=0.95, accuracy=0.85)
        defended = poison_run("lora", defense, seed, "poison-replacement", asr=0.30 + jitter, accuracy=0.85)
        defended[0]["extra"].pop("defense_families", None)
        if declared is not None:
            defended[0]["extra"]["defense_families"] = declared
        rows += defended
    return table4.build(leaderboard.build(rows), paper=paper4.annotate)


def test_a_defense_is_compared_as_the_family_it_declares_never_by_its_name():
    """A robust rule named without the ``robust-`` prefix is robust aggregation because it says so, and a
    ``robust-`` name that declares another family is not (the name decides nothing)."""
    [cell] = _poison_cells("trust-the-median", {"trust-the-median": str(DefenseFamily.ROBUST_AGGREGATION)})
    assert cell.defense_family == DefenseFamily.ROBUST_AGGREGATION
    assert (cell.paper, cell.comparison) == ("applies", "agree")  # backdoor: a target threat of robust aggregation
    [cell] = _poison_cells("robust-sounding", {"robust-sounding": str(DefenseFamily.DP)})
    assert cell.defense_family == DefenseFamily.DP and cell.comparison == "not measurable"  # DP does not target backdoors


def test_runs_stored_before_defenses_declared_a_family_still_report():
    [cell] = _poison_cells("robust-median", None)
    assert cell.defense_family == DefenseFamily.ROBUST_AGGREGATION and cell.comparison == "agree"
    [cell] = _poison_cells("robust-median", {"robust-median": "robust aggregation"})  # as the runner stores it now
    assert cell.defense_family == DefenseFamily.ROBUST_AGGREGATION and cell.comparison == "agree"


def test_a_byzantine_cell_on_a_generative_task_reads_the_utility_it_cost():
    # instruction tuning has no error rate: the run stores poison.utility_drop (ROUGE-L lost against its
    # attacker-free twin), and the cell reads that with failure level 0 instead of staying "not applicable"
    from report_helpers import run_rows

    rows = []
    for seed, (without, with_) in enumerate([(0.37, 0.01), (0.40, -0.02), (0.35, 0.03)]):
        for defenses, drop in (("none", without), ("robust-median", with_)):
            rows += run_rows(f"t4[method=instruction-tuning,defenses={defenses},attacks=byz-ipm]", seed,
                             method="instruction-tuning", defenses=defenses,
                             metrics={("none", "utility.rouge_l"): 0.4, ("byz-ipm", "poison.utility_drop"): drop})
    board = leaderboard.build(rows)
    (cell,) = [c for c in table4.build(board, paper=paper4.annotate) if c.role == "byzantine"]
    assert (cell.metric, cell.failure_level, cell.verdict) == ("poison.utility_drop", 0.0, "mitigates"), cell.reason
    assert cell.success_without == pytest.approx(0.3733, abs=1e-3)


def test_a_cell_names_the_attack_that_succeeded_without_the_defense():
    # prompt tuning's inversion row: the learned inversion reads the undefended update, DAGER reads nothing;
    # under SecAgg every attack reads nothing and the defended run's "strongest" is a tie. The cell is about
    # what the defense stopped, so it names the undefended run's strongest attack, not the tie's winner.
    from report_helpers import run_rows

    rows = []
    for seed, recovered in enumerate([0.25, 0.125, 0.25]):
        for defenses, learned in (("none", recovered), ("secagg", 0.0)):
            rows += run_rows(f"t4[method=prompt-tuning,defenses={defenses}]", seed, method="prompt-tuning",
                             defenses=defenses,
                             metrics={("inversion-dager", "inversion.recovered"): 0.0,
                                      ("inversion-learned", "inversion.recovered"): learned})
    board = leaderboard.build(rows)
    assert {r["inversion_attack"] for r in board if r["defenses"] == "secagg"} == {"inversion-dager"}  # the tie
    (cell,) = [c for c in table4.build(board) if c.role == "inversion" and c.defense == "secagg"]
    assert cell.attack == "inversion-learned" and cell.verdict == "mitigates", (cell.attack, cell.reason)


def test_a_cell_names_the_strongest_attack_over_its_runs_not_its_first_run():
    # LoRA's inversion row: the learned inversion reads 0 of seed 0's notes (a tie at 0 with DAGER, which the
    # run then names) and up to half of the others'; the cell named seed 0's tie winner, DAGER, which never read
    # anything. It names the attack of the run where the headline is highest.
    from report_helpers import run_rows

    rows = []
    for seed, recovered in enumerate([0.0, 0.25, 0.5]):
        for defenses, learned in (("none", recovered), ("dp-local", 0.0)):
            rows += run_rows(f"t4[method=lora,defenses={defenses}]", seed, method="lora", defenses=defenses,
                             metrics={("inversion-dager", "inversion.recovered"): 0.0,
                                      ("inversion-learned", "inversion.recovered"): learned})
    board = leaderboard.build(rows)
    seed0 = [r for r in board if r["defenses"] == "none" and r["seed"] == 0]
    assert seed0 and seed0[0]["inversion_attack"] == "inversion-dager"  # the tie
    (cell,) = [c for c in table4.build(board) if c.role == "inversion" and c.defense == "dp-local"]
    assert cell.attack == "inversion-learned", (cell.attack, cell.reason)
