"""Table 4 verdicts with confidence: oracle cells from a synthetic store with known paired differences,
the interval and the minimum detectable effect against hand computations, the failure level from a
row's ``floor``, and the matrix that renders every cell with a symbol and the paper's mark."""

from __future__ import annotations

import math

import pytest
from report_helpers import run_rows

from bench.api.metrics import MetricSpec, declare, spec_of
from bench.api.vocabulary import DefenseFamily
from bench.reporting import html, leaderboard, matrix4, paper4, table4, verdict

# Student t quantiles from a printed table (not from scipy): t(0.975, df) and t(0.80, df).
T975 = {2: 4.303, 4: 2.776}
T80 = {2: 1.061, 4: 0.941}


def inversion_run(method: str, defense: str, seed: int, rouge: float, floor: float | None = None) -> list[dict]:
    name = f"t4[method={method},defenses={defense},attacks=inversion-optim]"
    extras = {("inversion-optim", "inversion.recovered"): {"floor": floor}} if floor is not None else {}
    return run_rows(name, seed, method=method, defenses=defense, extras=extras,
                    metrics={("none", "utility.accuracy"): 0.9, ("inversion-optim", "inversion.recovered"): rouge})


# (undefended, defended) ROUGE-1 per seed, 5 seeds; the failure level is 0 unless a floor is stored.
ORACLE = {
    "fft": ([0.90, 0.92, 0.88, 0.91, 0.89], [0.05, 0.02, 0.04, 0.03, 0.06]),   # clear mitigation
    "lora": ([0.60, 0.62, 0.58, 0.61, 0.59], [0.61, 0.60, 0.59, 0.62, 0.58]),  # clear no effect
    "adapter": ([0.50, 0.52, 0.48, 0.51, 0.49], [0.10, 0.90, 0.20, 0.80, 0.30]),  # wide: inconclusive
}
FLOOR = 0.58  # e.g. what guessing another record of the task scores


@pytest.fixture(scope="module")
def oracle_rows() -> list[dict]:
    rows = []
    for method, (without, with_) in ORACLE.items():
        for seed, (a, b) in enumerate(zip(without, with_)):
            rows += inversion_run(method, "none", seed, a) + inversion_run(method, "dp-local", seed, b)
    for seed in range(5):   # scores 0.60 against a floor of 0.58: below the failure level's margin
        rows += inversion_run("prompt-tuning", "none", seed, 0.60 + 0.005 * seed, floor=FLOOR)
        rows += inversion_run("prompt-tuning", "dp-local", seed, 0.59, floor=FLOOR)
    return rows


@pytest.fixture(scope="module")
def oracle(oracle_rows) -> dict[str, table4.Cell]:
    cells = table4.build(leaderboard.build(oracle_rows), paper=paper4.annotate, stored=table4.floors(oracle_rows))
    return {c.method: c for c in cells}


def test_oracle_verdicts(oracle):
    assert {m: c.verdict for m, c in oracle.items()} == {
        "fft": "mitigates", "lora": "no effect", "adapter": "inconclusive", "prompt-tuning": "not applicable"}


def test_oracle_intervals_match_a_hand_computed_t_interval(oracle):
    for method, (without, with_) in ORACLE.items():
        diffs = [b - a for a, b in zip(without, with_)]
        mean = sum(diffs) / 5
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4)
        half = T975[4] * sd / math.sqrt(5)
        cell = oracle[method]
        assert cell.seeds == 5 and cell.change == pytest.approx(mean)
        assert cell.paired_sd == pytest.approx(sd)
        assert (cell.change_low, cell.change_high) == pytest.approx((mean - half, mean + half), abs=1e-3)
        assert cell.threshold == pytest.approx(-verdict.MITIGATION * sum(without) / 5)
    wide = oracle["adapter"]
    assert wide.change_low < wide.threshold and wide.change_high > 0   # covers both: inconclusive


def test_not_applicable_is_measured_against_the_stored_floor(oracle, oracle_rows):
    cell = oracle["prompt-tuning"]
    assert cell.failure_level == pytest.approx(FLOOR)
    assert cell.advantage_without == pytest.approx(0.61 - FLOOR)
    assert "failure level" in cell.reason and cell.comparison == "not measurable"
    # Without the floor the same runs would count as a working attack (ROUGE 0.6 above the declared 0).
    blind = {c.method: c for c in table4.build(leaderboard.build(oracle_rows))}["prompt-tuning"]
    assert blind.failure_level == spec_of("inversion.recovered").chance == 0.0
    assert blind.verdict == "no effect"


def test_floors_read_extra_as_dict_or_json_text():
    rows = inversion_run("lora", "none", 3, 0.7, floor=0.4)
    found = table4.floors(rows)
    key = ("h-t4[method=lora,defenses=none,attacks=inversion-optim]", 3, "inversion-optim", "inversion.recovered")
    assert found == {key: 0.4}
    import json

    as_text = [{**r, "extra": json.dumps(r["extra"])} for r in rows]
    assert table4.floors(as_text) == found


def test_the_interval_uses_the_t_quantile_not_two_standard_errors():
    got = verdict.interval([-0.1, -0.2, -0.3])
    assert got.mean == pytest.approx(-0.2) and got.sd == pytest.approx(0.1)
    assert got.high - got.mean == pytest.approx(T975[2] * 0.1 / math.sqrt(3), abs=1e-3)   # 0.248, not 2 se = 0.115


@pytest.mark.parametrize("n", [3, 5])
def test_mde_matches_a_hand_computation(n):
    sd = 0.059   # the paired sd of membership AUC differences the issue measured
    expected = (T975[n - 1] + T80[n - 1]) * sd / math.sqrt(n)   # 0.183 at 3 seeds, 0.098 at 5
    assert verdict.mde(sd, n) == pytest.approx(expected, abs=1e-3)
    assert verdict.mde(sd, 1) is None


def test_seeds_needed_for_the_membership_goal():
    # 0.05 AUC at sd 0.059 needs 13 seeds: (2.179 + 0.873) * 0.059 / sqrt(13) = 0.0499, at 12 it is 0.0524
    assert matrix4.seeds_needed(0.059, 0.05) == 13


def test_pooled_sd_weights_by_degrees_of_freedom():
    assert verdict.pooled_sd([(0.1, 3), (0.2, 5)]) == pytest.approx(math.sqrt((2 * 0.01 + 4 * 0.04) / 6))
    assert verdict.pooled_sd([(0.3, 1)]) is None


def test_a_column_mixing_seed_counts_reads_its_worst_group_at_that_groups_seeds():
    # Oracle: a Byzantine column with a noisy file at 40 seeds (sd 0.2) and a quiet one at 5 (sd 0.04). Each
    # group's own MDE: (2.023 + 0.851) * 0.2 / sqrt(40) = 0.0909 (t975 and t80 at 39 df) and
    # (2.776 + 0.941) * 0.04 / sqrt(5) = 0.0665, so the column reads 0.0909 at 40 seeds; pooling every cell
    # (sd 0.198) at the fewest seeds read (2.776 + 0.941) * 0.198 / sqrt(5) = 0.328
    cells = [{"role": "byzantine", "defense": "robust-median", "verdict": "no effect", "paired_sd": sd, "seeds": n}
             for sd, n in [(0.2, 40)] * 4 + [(0.04, 5)]]
    (column,) = matrix4.column_mde(cells)
    assert column.seeds == 40 and column.sd == pytest.approx(0.2)
    assert column.mde == pytest.approx(verdict.mde(0.2, 40)) and column.mde == pytest.approx(0.0909, abs=1e-3)
    assert column.met and column.cells == 5
    groups = matrix4.seed_groups([(c["paired_sd"], c["seeds"]) for c in cells])
    assert [(g.seeds, g.cells) for g in groups] == [(5, 1), (40, 4)]
    assert groups[0].mde == pytest.approx((T975[4] + T80[4]) * 0.04 / math.sqrt(5), abs=1e-4)
    (line,) = matrix4.role_summary(cells)
    assert "MDE 0.091 at 40 seeds (paired sd 0.200 pooled over the 4 cells with 40 seeds" in line and "met" in line


def test_column_mde_is_printed_with_its_goal(oracle):
    cells = table4.as_dicts(list(oracle.values()))
    (column,) = matrix4.column_mde(cells)   # one column: (inversion, dp-local); the n/a cell is left out
    sds = [oracle[m].paired_sd for m in ("fft", "lora", "adapter")]
    assert column.sd == pytest.approx(math.sqrt(sum(s * s for s in sds) / 3)) and column.seeds == 5
    assert column.goal == 0.1 and column.met is (column.mde <= 0.1)
    text = matrix4.mde_markdown(cells)
    assert "| gradient inversion (≤ 0.1) |" in text and f"{column.mde:.3f}" in text


def test_matrix_renders_every_cell_with_a_symbol_and_the_paper_mark(oracle):
    cells = table4.as_dicts(list(oracle.values()))
    roles, defenses, rows = matrix4.layout(cells)
    assert roles == ["inversion"] and defenses == ["dp-local"]
    assert [label for label, _ in rows] == ["fft", "lora", "adapter", "prompt-tuning"]   # the paper's row order
    expected = {"fft": "✓", "lora": "✗", "adapter": "?", "prompt-tuning": "–"}
    for label, (entry,) in rows:
        assert entry.symbols == (("inversion", expected[label], oracle[label].comparison == "disagree"),)
        assert entry.paper == paper4.MARK_SYMBOL[paper4.paper_mark(label, DefenseFamily.DP)[0]]
    text = matrix4.matrix_markdown(cells)
    assert "| fft | ✓ │ A |" in text and "| prompt-tuning | – │ L |" in text
    assert "| lora | **✗** │ A |" in text   # no effect where the paper says DP applies: a disagreement


def test_every_verdict_has_a_symbol_and_every_mark_a_letter():
    assert set(matrix4.SYMBOL) == set(table4.VERDICTS)
    assert set(paper4.MARK_SYMBOL) == set(paper4.MARKS)
    assert len(set(matrix4.SYMBOL.values())) == len(matrix4.SYMBOL)


def test_inconclusive_is_not_measurable_against_the_paper(oracle):
    assert oracle["adapter"].comparison == "not measurable"
    assert oracle["adapter"].comparison_note.startswith("inconclusive")


def test_page_leads_with_the_matrix_read_from_the_csv(oracle, tmp_path):
    from bench.reporting.report import write_table4_csv, write_table4_markdown

    cells = list(oracle.values())
    write_table4_csv(cells, tmp_path / "table4.csv")
    write_table4_markdown(cells, tmp_path / "table4.md", missing=["no run of x"], by_design=["seeds 3-4 of y"])
    page = html.render(tmp_path)
    assert page.index('id="table4-matrix"') < page.index('id="table4-mde"') < page.index('id="table4"')
    assert page.count('class="v disagree"') == 1 and "✓" in page and "│" in page
    # not the rule's bullets, nor the cells whose one-sided seeds no file plans (listed apart, below)
    assert html.missing_lines((tmp_path / "table4.md").read_text()) == ["no run of x"]
    assert "by design" in (tmp_path / "table4.md").read_text() and "- seeds 3-4 of y" in (tmp_path / "table4.md").read_text()
    markdown = (tmp_path / "table4.md").read_text()
    assert markdown.index("## The matrix") < markdown.index("## Minimum detectable effect") < markdown.index("## Detail")
    assert "t = 4.30 at 3 seeds" in markdown and "80% power" in markdown


def test_heatmap_colours_agreement_and_writes_verdict_and_mark(oracle):
    from bench.reporting import figures

    roles, rows, grid, texts = figures.heatmap_grid(list(oracle.values()))
    colours = list(figures.COMPARISON_COLOURS)
    for (_, method, _), line, text in zip(rows, grid, texts):
        assert colours[line[0]] == oracle[method].comparison
        assert text[0] == f"{matrix4.SYMBOL[oracle[method].verdict]} / {paper4.MARK_SYMBOL[oracle[method].paper]}"


def test_a_metric_declares_its_chance_level_once():
    assert spec_of("mia.auc").chance == 0.5 and spec_of("mia.auc").mde_goal == 0.05
    with pytest.raises(ValueError, match="already declared"):
        declare(MetricSpec(name="mia.auc", chance=0.5, higher_is_better=True, scale="AUC", mde_goal=0.05))
    with pytest.raises(KeyError, match="declared: "):
        spec_of("mia.nothing")


def test_a_stored_floor_overrides_the_byzantine_clean_twin():
    from report_helpers import synthetic_grid

    board = leaderboard.build(synthetic_grid())
    runs, clean = table4._index(board)
    byz = next(r for r in runs[("open-weight", "lora", "fedavg", "none", "byzantine")] if r["seed"] == 0)
    key = (byz["scenario_hash"], 0, byz["poison_attack"], "poison.asr")
    assert table4.failure_level(byz, "byzantine", clean) == pytest.approx(1 - 0.9)        # the twin's error
    assert table4.failure_level(byz, "byzantine", clean, {key: 0.3}) == pytest.approx(0.3)  # the measured floor
