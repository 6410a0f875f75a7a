"""Table 4 cells backed by a published curve (issue 15): a "not applicable" cell reads *resists* only when a
scenario's ``resists:`` entry names a curve on which the same attack beats its floor on the same method;
an entry whose curve never shows the attack working backs nothing; bad entries are errors naming the
file and the key."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from report_helpers import run_rows

from bench.api.errors import UserError
from bench.reporting import html, leaderboard, paper4, resists, table4
from bench.reporting.report import scenario_curves, write_table4_csv, write_table4_markdown
from bench.spec.scenario import Resists, check, load

FLOOR = 0.58  # what guessing another record scores: the failure level every row stores


def inversion_run(method: str, defense: str, seed: int, rouge: float) -> list[dict]:
    name = f"t4[method={method},defenses={defense},attacks=inversion-dager]"
    return run_rows(name, seed, method=method, defenses=defense,
                    extras={("inversion-dager", "inversion.recovered"): {"floor": FLOOR}},
                    metrics={("none", "utility.accuracy"): 0.9, ("inversion-dager", "inversion.recovered"): rouge})


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    out = []
    for seed in range(3):
        out += inversion_run("lora", "none", seed, 0.0) + inversion_run("lora", "secagg", seed, 0.0)  # fails: 0 < floor
        out += inversion_run("fft", "none", seed, 1.0) + inversion_run("fft", "secagg", seed, 0.0)    # works, mitigated
    return out


def write_curve(path: Path, points: list[tuple[str, float, float]]) -> Path:
    """A curve CSV as collect.py writes it: (method, inversion.rouge1, its floor) per run."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "rank", "inversion.rouge1", "inversion.rouge1.floor"])
        writer.writerows([(m, 8, v, f) for m, v, f in points])
    return path


def backing(tmp_path: Path, points: list[tuple[str, float, float]], method: str = "lora") -> resists.Backing:
    entry = Resists(method=method, attack="inversion-dager", curve=str(write_curve(tmp_path / "curve.csv", points)),
                    metric="inversion.rouge1", why="rank 8 < 46 layer inputs")
    return resists.read_backing(entry, "scenarios/x.yaml", "resists[0]")


def cells_with(rows: list[dict], curves: list[resists.Backing]) -> dict[str, table4.Cell]:
    built = table4.build(leaderboard.build(rows), paper=paper4.annotate, stored=table4.floors(rows), curves=curves)
    return {c.method: c for c in built}


def test_a_backed_not_applicable_cell_reads_resists(rows, tmp_path):
    assert cells_with(rows, [])["lora"].verdict == "not applicable"
    # the attack works at another setting of lora (0.95 against a floor of 0.55), fails at the grid's
    curve = backing(tmp_path, [("lora", 0.0, 0.55), ("lora", 0.95, 0.55), ("fft", 1.0, 0.5)])
    assert (curve.backed, curve.rows, curve.working) == (True, 2, 1)
    cell = cells_with(rows, [curve])["lora"]
    assert cell.verdict == "resists" and cell.curve == curve.curve
    assert cell.comparison == "not measurable"   # a zero backed by a curve says nothing about the defense
    assert "shows where it stops resisting" in cell.reason


def test_a_curve_whose_attack_never_beats_its_floor_backs_nothing(rows, tmp_path):
    # 0.60 against 0.58 is an advantage of 0.02 < 0.05; the fft row that works is another method's
    curve = backing(tmp_path, [("lora", 0.0, 0.55), ("lora", 0.60, 0.58), ("fft", 1.0, 0.5)])
    assert not curve.backed
    cells = cells_with(rows, [curve])
    assert cells["lora"].verdict == "not applicable" and cells["lora"].curve == ""
    text = resists.summary_markdown(list(cells.values()), [curve])
    assert "does not back it" in text and "1 not applicable" in text and "0 of them backed" in text


def test_an_applicable_cell_is_untouched(rows, tmp_path):
    curve = backing(tmp_path, [("fft", 1.0, 0.5)], method="fft")
    before, after = cells_with(rows, [])["fft"], cells_with(rows, [curve])["fft"]
    assert before.verdict == after.verdict == "mitigates" and after.curve == ""
    assert before == after


def test_a_cell_whose_attack_cannot_run_is_not_backed(tmp_path):
    # "not applicable" because the attack never ran without the defense: a curve says nothing about it
    rows = []
    for seed in range(3):
        rows += run_rows("t4[method=lora,defenses=none,attacks=inversion-dager]", seed, status="incompatible",
                         error="refused")
        rows += inversion_run("lora", "secagg", seed, 0.0)
    curve = backing(tmp_path, [("lora", 0.95, 0.55)])
    cell = cells_with(rows, [curve])["lora"]
    assert (cell.verdict, cell.advantage_without, cell.curve) == ("not applicable", None, "")


def test_reports_name_the_curve_count_and_symbol(rows, tmp_path):
    curve = backing(tmp_path, [("lora", 0.95, 0.55)])
    cells = list(cells_with(rows, [curve]).values())
    write_table4_csv(cells, tmp_path / "table4.csv")
    write_table4_markdown(cells, tmp_path / "table4.md", curves=[curve])
    markdown = (tmp_path / "table4.md").read_text()
    assert "⊥ resists" in markdown and "| lora | ⊥ │ A |" in markdown
    assert "1 cells where the attack does not beat its failure level" in markdown and "1 of them backed" in markdown
    assert f"- lora × inversion-dager: ⊥ in 1 cells; curve `{curve.curve}`" in markdown
    assert "why: rank 8 < 46 layer inputs" in markdown
    with (tmp_path / "table4.csv").open() as handle:
        lora = next(r for r in csv.DictReader(handle) if r["method"] == "lora")
    assert (lora["verdict"], lora["curve"]) == ("resists", curve.curve)
    page = html.render(tmp_path)   # the page shows the same section, after the matrix
    assert page.index('id="table4-matrix"') < page.index('id="table4-curves"')
    assert "1 of them backed by a curve" in page and "why: rank 8 &lt; 46 layer inputs" in page


SCENARIO = """\
name: t
tier: open-weight
model: tiny-gpt2
task: {{name: synthetic-clinical, params: {{max_length: 24, objective: language}}}}
method: lora
attacks: [inversion-dager]
resists:
  - {entry}
"""


def scenario_file(tmp_path: Path, entry: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(entry=entry))
    return path


def test_a_missing_curve_file_names_the_file_and_the_key(tmp_path):
    path = scenario_file(tmp_path, "{method: lora, attack: inversion-dager, curve: nowhere.csv, "
                                   "metric: inversion.rouge1, why: w}")
    (scenario,) = load(path)   # loading reads no curve; the report and validate do
    for reading in (lambda: scenario_curves([scenario]), lambda: check(scenario)):
        with pytest.raises(UserError) as error:
            reading()
        assert (error.value.file, error.value.key) == (str(path), "resists[0].curve")
        assert "nowhere.csv" in str(error.value)


def test_the_curve_path_is_taken_from_the_scenario_files_folder(tmp_path):
    write_curve(tmp_path / "c.csv", [("lora", 0.9, 0.5)])
    path = scenario_file(tmp_path, "{method: lora, attack: inversion-dager, curve: c.csv, metric: inversion.rouge1, "
                                   "why: w}")
    (curve,) = scenario_curves(load(path))
    assert curve.backed and Path(curve.curve).name == "c.csv"


@pytest.mark.parametrize(("entry", "key", "says"), [
    ("{method: lora, attack: inversion-dager, curve: c.csv, metric: inversion.rouge1, why: w, rank: 8}",
     "resists[0].rank", "allowed: attack, curve, method, metric, protocol, why"),
    ("{method: lora, attack: inversion-dager, curve: c.csv, metric: inversion.rouge1}", "resists[0].why", "missing"),
    ("{method: loraa, attack: inversion-dager, curve: c.csv, metric: inversion.rouge1, why: w}",
     "resists[0].method", "allowed:"),
    ("{method: lora, attack: dager, curve: c.csv, metric: inversion.rouge1, why: w}", "resists[0].attack", "allowed:"),
])
def test_a_bad_entry_names_the_file_the_key_and_what_is_allowed(tmp_path, entry, key, says):
    path = scenario_file(tmp_path, entry)
    with pytest.raises(UserError) as error:
        load(path)
    assert (error.value.file, error.value.key) == (str(path), key) and says in str(error.value)


def test_a_curve_without_the_metric_column_is_an_error(tmp_path):
    write_curve(tmp_path / "c.csv", [("lora", 0.9, 0.5)])
    path = scenario_file(tmp_path, "{method: lora, attack: inversion-dager, curve: c.csv, metric: mia.auc, why: w}")
    with pytest.raises(UserError) as error:
        scenario_curves(load(path))
    assert error.value.key == "resists[0].metric" and "'mia.auc'" in str(error.value)


def test_the_cli_exits_2_on_an_unknown_key(tmp_path, capsys):
    from bench.cli import main

    path = scenario_file(tmp_path, "{method: lora, attack: inversion-dager, curve: c.csv, metric: inversion.rouge1, "
                                   "why: w, rank: 8}")
    assert main(["validate", str(path)]) == 2
    assert "resists[0].rank" in capsys.readouterr().err


def test_resists_is_not_part_of_a_runs_identity(tmp_path):
    # declaring a curve must not orphan the stored runs of the grid it annotates
    write_curve(tmp_path / "c.csv", [("lora", 0.9, 0.5)])
    (declared,) = load(scenario_file(tmp_path, "{method: lora, attack: inversion-dager, curve: c.csv, "
                                               "metric: inversion.rouge1, why: w}"))
    bare = tmp_path / "bare.yaml"
    bare.write_text(SCENARIO.split("resists:")[0].format())
    (plain,) = load(bare)
    assert declared.resists and not plain.resists
    assert (declared.hash, declared.training_key) == (plain.hash, plain.training_key)


def test_a_curve_of_several_attacks_backs_only_the_attack_that_works_on_it(tmp_path):
    # extraction curves hold one row per (run, attack): pii-infer beating its floor must not back pii-extract
    path = tmp_path / "curve.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "attack", "extraction.rate", "extraction.rate.floor"])
        writer.writerows([("lora", "pii-extract", 0.02, 0.0), ("lora", "pii-infer", 0.60, 0.19)])
    for attack, backed in (("pii-extract", False), ("pii-infer", True)):
        entry = Resists(method="lora", attack=attack, curve=str(path), metric="extraction.rate", why="rank")
        found = resists.read_backing(entry, "scenarios/x.yaml", "resists[0]")
        assert (found.rows, found.backed) == (1, backed)


def test_a_curve_backs_a_cell_of_the_same_role_that_names_another_attack_of_it(tmp_path):
    # the extraction cell shows the run's strongest PII attack; where all three stay at their floors, the one it
    # names is arbitrary, so a curve on which pii-infer works backs a LoRA cell that names pii-extract
    def run(defense: str, seed: int) -> list[dict]:
        name = f"t4x[method=lora,defenses={defense},attacks=pii-extract+pii-infer]"
        rows = run_rows(name, seed, method="lora", defenses=defense,
                        extras={("pii-extract", "extraction.rate"): {"floor": 0.0},
                                ("pii-infer", "extraction.rate"): {"floor": 0.2}},
                        metrics={("none", "utility.rouge_l"): 0.4, ("pii-extract", "extraction.rate"): 0.01,
                                 ("pii-infer", "extraction.rate"): 0.15})
        rows[0]["extra"]["attack_roles"] = {"pii-extract": "extraction", "pii-infer": "extraction"}
        return rows

    rows = [r for seed in range(3) for d in ("none", "scrub-pii") for r in run(d, seed)]
    path = tmp_path / "curve.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "attack", "extraction.rate", "extraction.rate.floor"])
        writer.writerows([("lora", "pii-extract", 0.0, 0.0), ("lora", "pii-infer", 0.35, 0.15)])
    entry = Resists(method="lora", attack="pii-infer", curve=str(path), metric="extraction.rate", why="32 steps")
    found = [resists.read_backing(entry, "scenarios/x.yaml", "resists[0]")]
    [cell] = [c for c in cells_with(rows, found).values() if c.role == "extraction"]
    assert cell.attack == "pii-extract" and cell.verdict == "resists", (cell.attack, cell.verdict, cell.reason)
    assert "⊥ in 1 cells" in resists.summary_markdown([cell], found)
    # another role's curve does not: an inversion curve on lora backs no extraction cell
    other = Resists(method="lora", attack="inversion-dager", curve=str(write_curve(tmp_path / "inv.csv", [("lora", 0.9, 0.5)])),
                    metric="inversion.rouge1", why="rank")
    [cell] = [c for c in cells_with(rows, [resists.read_backing(other, "x.yaml", "r")]).values() if c.role == "extraction"]
    assert cell.verdict == "not applicable"


def test_a_curve_backs_only_the_cells_of_its_protocol(tmp_path):
    # a KD curve (logit sharing) says nothing about parameter sharing's cells of the same method and role
    def run(defense: str, seed: int, protocol: str) -> list[dict]:
        name = f"t4p[protocol={protocol},defenses={defense},attacks=mia-kd-logits]"
        rows = run_rows(name, seed, method="fft", defenses=defense,
                        metrics={("none", "utility.accuracy"): 0.4, ("mia-kd-logits", "mia.auc"): 0.51})
        rows[0]["extra"]["protocol"] = protocol
        return rows

    rows = [r for seed in range(3) for d in ("none", "dp-logits") for p in ("kd", "fedavg") for r in run(d, seed, p)]
    path = tmp_path / "curve.csv"
    path.write_text("method,mia.auc,mia.auc.floor\nfft,0.60,0.5\n")
    for protocol, backed in (("kd", {"kd"}), ("fedavg", {"fedavg"})):
        entry = Resists(method="fft", attack="mia-kd-logits", curve=str(path), metric="mia.auc", why="8 records",
                        protocol=protocol)
        found = [resists.read_backing(entry, "scenarios/x.yaml", "resists[0]")]
        built = table4.build(leaderboard.build(rows), paper=paper4.annotate, curves=found)
        assert {c.protocol for c in built if c.verdict == "resists"} == backed
        assert {c.protocol for c in built if c.verdict == "not applicable"} == {"kd", "fedavg"} - backed
    assert "- fft via kd × mia-kd-logits: ⊥ in 0 cells" not in resists.summary_markdown(built, found)


def test_a_curve_whose_attack_works_in_the_grid_backs_no_cell_and_says_why(tmp_path):
    # table4-extraction.yaml's LoRA entry: at 8 seeds the attack beats its floor without a defense, so no cell
    # reads ⊥; the summary said "⊥ in 0 cells", which reads like a curve that backs nothing it should
    rows = [r for seed in range(3) for d, auc in (("none", 0.80), ("dp-local", 0.55))
            for r in run_rows(f"t4[defenses={d},attacks=mia-reference]", seed, method="fft", defenses=d,
                              metrics={("none", "utility.accuracy"): 0.8, ("mia-reference", "mia.auc"): auc + 0.01 * seed})]
    path = tmp_path / "curve.csv"
    path.write_text("method,mia.auc,mia.auc.floor\nfft,0.70,0.5\n")
    entry = Resists(method="fft", attack="mia-reference", curve=str(path), metric="mia.auc", why="more records")
    found = [resists.read_backing(entry, "scenarios/x.yaml", "resists[0]")]
    built = table4.build(leaderboard.build(rows), paper=paper4.annotate, curves=found)
    assert [c.verdict for c in built if c.role == "mia"] == ["mitigates"]
    text = resists.summary_markdown(built, found)
    assert "- fft × mia-reference: ⊥ in no cell (the attack beats its failure level without a defense here)" in text
    assert "⊥ in 0 cells" not in text
