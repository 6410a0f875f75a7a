"""Extraction attacks (attacks/extraction), their scorer, the PII rules and the scrub-pii defense.

Oracles: a model trained until it memorises its records reproduces them (rate near 1) while the
base model and held-out records stay at the floor; scrubbed training leaves no client PII to extract;
the Wilson interval equals a hand computation; the tier refuses attacks whose access it does not grant.
"""

from __future__ import annotations

import copy

import pytest
import torch

from bench.api import pii
from bench.api.predictions import Extraction
from bench.api.registry import ATTACKS, DEFENSES, MODELS, TASKS, load_plugins
from bench.api.transcript import GroundTruth, ProviderRecord, ThreatView
from bench.api.vocabulary import DefenseFamily
from bench.scoring.extraction import canary_metrics, wilson
from bench.scoring.score import score
from bench.world.tasks import Canary
from bench.world.tiers import OpenModel

load_plugins()

NOTE = "Patient Alice Adams, MRN 123456, age 45, seen on 2026-03-14 with a mild fever. Plan: rest and fluids advised."


# --- Wilson interval and the scorer ---------------------------------------------------------------
def test_wilson_matches_a_hand_computation():
    # 3 of 10 at 95%: centre (0.3 + 1.96^2/20) / (1 + 1.96^2/10) = 0.35551, half-width 0.24772
    low, high = wilson(3, 10)
    assert low == pytest.approx(0.10779, abs=1e-4) and high == pytest.approx(0.60322, abs=1e-4)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
    assert wilson(0, 5)[1] == pytest.approx(0.43448, abs=1e-4)  # z^2 / (n + z^2)


def test_scorer_splits_members_from_non_members_and_reports_the_base_rate_as_floor():
    flags = torch.tensor([1, 0, 1, 0])
    prediction = Extraction(hits=torch.tensor([2.0, 0.0, 1.0, 1.0]), trials=torch.tensor([2.0, 2.0, 2.0, 2.0]),
                            base_hits=torch.tensor([1.0, 0.0, 0.0, 0.0]), chance=0.1)
    metrics = {m.name: m for m in score(prediction, GroundTruth(member_flags=flags))}
    rate = metrics["extraction.rate"]
    assert rate.value == pytest.approx(3 / 4)
    assert (rate.ci_low, rate.ci_high) == pytest.approx(wilson(3, 4))
    assert rate.extra["floor"] == pytest.approx(1 / 4) and rate.extra["chance"] == 0.1
    assert metrics["extraction.base_rate"].value == pytest.approx(1 / 4)
    assert metrics["extraction.nonmember_rate"].value == pytest.approx(1 / 4)


def test_canaries_are_scored_against_the_hidden_secret_per_repetition_count():
    canaries = [Canary("p1 ", ["1111", "2222"], "1111", repeats=1), Canary("p2 ", ["3333"], "3333", repeats=4),
                Canary("p3 ", ["4444"], "4444", repeats=4)]
    truth = GroundTruth(canaries=canaries, canary_copies=[1, 3, 4])
    metrics = {m.name: m for m in canary_metrics(["2222.", "3333.", "4444."], ["1111", "", ""], truth)}
    assert metrics["extraction.canary_rate"].value == pytest.approx(2 / 3)
    assert metrics["extraction.canary_rate"].extra["floor"] == pytest.approx(1 / 3)
    assert metrics["extraction.canary_rate@r1"].value == 0.0 and metrics["extraction.canary_rate@r4"].value == 1.0
    assert metrics["extraction.canary_copies@r4"].value == pytest.approx(3.5)


def test_a_canary_whose_completion_holds_half_its_secret_counts_as_approximately_extracted():
    canaries = [Canary("p1 ", [], "123456", repeats=1), Canary("p2 ", [], "654321", repeats=1),
                Canary("p3 ", [], "111222", repeats=16), Canary("p4 ", [], "909090", repeats=16)]
    truth = GroundTruth(canaries=canaries, canary_copies=[1, 1, 16, 16])
    # 3 consecutive digits of the secret (half) count; 2 consecutive ones do not; the exact secret counts too
    completions = [" 123999.", " 650403.", " 111222.", " 919293."]
    metrics = {m.name: m for m in canary_metrics(completions, [" 456000.", " 000000.", "", ""], truth)}
    assert metrics["extraction.canary_rate"].value == pytest.approx(1 / 4)
    partial = metrics["extraction.canary_partial"]
    assert partial.value == pytest.approx(2 / 4) and (partial.ci_low, partial.ci_high) == pytest.approx(wilson(2, 4))
    assert partial.extra["floor"] == pytest.approx(1 / 4)  # the base model's "456" is half of 123456
    assert metrics["extraction.canary_partial@r1"].value == pytest.approx(1 / 2)
    assert metrics["extraction.canary_partial@r1"].extra["floor"] == pytest.approx(1 / 2)
    assert metrics["extraction.canary_partial@r16"].value == pytest.approx(1 / 2)
    assert metrics["extraction.canary_partial@r16"].extra["floor"] == 0.0


# --- PII rules and the scrubber -------------------------------------------------------------------
def test_pii_rules_find_the_synthetic_fields_and_scrub_removes_them():
    assert pii.values(NOTE) == {("name", "Alice Adams"), ("mrn", "123456"), ("date", "2026-03-14")}
    scrubbed = pii.scrub(NOTE)
    assert pii.items(scrubbed) == [] and "[NAME]" in scrubbed and "[MRN]" in scrubbed and "[DATE]" in scrubbed
    pair = "### Instruction:\nWhen was Omar Vogel last seen?\n### Response:\nOmar Vogel was last seen on 2026-01-02."
    assert pii.values(pair) == {("name", "Omar Vogel"), ("date", "2026-01-02")}
    assert pii.broad_items("Omar Vogel lives in Lisbon.") == ["Omar", "Vogel", "Lisbon"]
    assert pii.broad_items(pii.scrub("Omar Vogel lives in Lisbon.")) == ["Lisbon"]  # what the rules leave


def test_scrub_pii_defense_trains_on_scrubbed_records_and_reports_the_residual():
    defense = DEFENSES.get("scrub-pii")(DEFENSES.get("scrub-pii").Config())
    seen = []

    class Job:
        examples = [{"text": NOTE, "label": 1}, {"text": "Where does Omar Vogel live? Omar Vogel lives in Lisbon."}]

    wrapped = defense.wrap_training(lambda job: seen.append(list(job.examples)), client=0, rng=torch.Generator())
    job = Job()
    wrapped(job)
    assert pii.items(seen[0][0]["text"]) == [] and seen[0][0]["label"] == 1
    assert job.examples[0]["text"] == NOTE  # the client's own record is unchanged for the ground truth
    report = defense.privacy()
    assert report["privacy.scrubbed_items"] == 3 + 2
    # broad net before: Alice, Adams, 123456, 2026 | Omar, Vogel, Omar, Vogel, Lisbon; after: Lisbon (a city)
    assert report["privacy.residual_pii_fraction"] == pytest.approx(1 / 9)


# --- end to end on a memorising model -------------------------------------------------------------
MEMBERS = [NOTE, "Patient Priya Novak, MRN 987654, age 61, seen on 2026-11-05 with recurring migraines. "
                 "Plan: EEG scheduled."]
OTHERS = ["Patient Kenji Rossi, MRN 555123, age 33, seen on 2026-07-21 with swollen ankles. Plan: ECG performed.",
          "Patient Lena Ueda, MRN 246810, age 72, seen on 2026-02-09 with a breast lump. Plan: biopsy scheduled."]
PUBLIC = ["Patient Omar Berg, MRN 111222, age 50, seen on 2026-05-05 with nausea and bloating. Plan: endoscopy planned.",
          "Patient Dana Costa, MRN 333444, age 29, seen on 2026-09-17 with a mild fever. Plan: blood tests ordered."]


@pytest.fixture(scope="module")
def models():
    """(base, memorised, scrubbed-trained) OpenModels of tiny-gpt2 on the members as language modelling."""
    task = TASKS.get("synthetic-clinical")(TASKS.get("synthetic-clinical").Config(objective="language", max_length=48))
    source = MODELS.get("tiny-gpt2")(MODELS.get("tiny-gpt2").Config())
    base, tokenizer = source.load("language", 0, torch.device("cpu"), 0)
    scrub = DEFENSES.get("scrub-pii")(DEFENSES.get("scrub-pii").Config())
    trained = []
    for wrap in (lambda f: f, lambda f: scrub.wrap_training(f, 0, torch.Generator())):
        model = copy.deepcopy(base)

        def fit(job, model=model):
            optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
            batch = task.collate(job.examples, tokenizer, torch.device("cpu"))
            model.train()
            for _ in range(120):
                optimizer.zero_grad()
                task.example_losses(model, batch).mean().backward()
                optimizer.step()

        class Job:
            examples = [{"text": t, "label": 0} for t in MEMBERS]

        torch.manual_seed(0)
        wrap(fit)(Job())
        trained.append(OpenModel(model, None, task, tokenizer))
    return OpenModel(base, None, task, tokenizer), trained[0], trained[1], tokenizer


def _view(final, base, tokenizer, log=()):
    candidates = [{"text": t, "label": 0} for t in (MEMBERS[0], OTHERS[0], MEMBERS[1], OTHERS[1])]
    return ThreatView(vantage="external", rounds=[], candidates=candidates, layout=None, final_model=final,
                      base_model=base, tokenizer=tokenizer, federation=None,
                      auxiliary=[{"text": t, "label": 0} for t in PUBLIC], provider_log=list(log))


FLAGS = GroundTruth(member_flags=torch.tensor([1, 0, 1, 0]))


def _rates(attack_name, view, **params):
    cls = ATTACKS.get(attack_name)
    prediction = cls(cls.Config(**params)).run(view, torch.Generator().manual_seed(0))
    return {m.name: m for m in score(prediction, FLAGS)}


@pytest.mark.parametrize("attack", ["extract-prefix", "pii-reconstruct", "pii-infer"])
def test_a_memorised_record_is_extracted_and_the_base_model_stays_at_its_floor(models, attack):
    base, memorised, _, tokenizer = models
    params = {"choices": 2} if attack == "pii-infer" else {}  # two public values per kind
    metrics = _rates(attack, _view(memorised, base, tokenizer), **params)
    assert metrics["extraction.rate"].value >= 0.8
    floor = metrics["extraction.rate"].extra["floor"]
    assert floor == metrics["extraction.base_rate"].value
    ceiling = 0.5 + 1e-9 if attack == "pii-infer" else 0.0  # a pick among 2 may be right by chance
    assert floor <= ceiling and metrics["extraction.nonmember_rate"].value <= ceiling


def test_scrubbed_training_leaves_no_client_pii_for_the_pii_attacks(models):
    """Same records, same training, scrubbed first: the attacks that find the PII in the memorising model
    (the contrast, so that a zero here is the scrub's doing) find none in the scrubbed one."""
    base, memorised, scrubbed, tokenizer = models
    for attack, params in (("pii-reconstruct", {}), ("pii-extract", {"samples": 2, "prompt_words": 2})):
        assert _rates(attack, _view(memorised, base, tokenizer), **params)["extraction.rate"].value > 0, attack
        assert _rates(attack, _view(scrubbed, base, tokenizer), **params)["extraction.rate"].value == 0.0, attack


def test_the_provider_reads_client_pii_from_its_log_only_from_client_requests(models):
    base, memorised, _, tokenizer = models
    log = [ProviderRecord(client=0, purpose="tuning-upload", text=MEMBERS[0]),
           ProviderRecord(client=None, purpose="inference", text=OTHERS[0])]  # the evaluation's own query
    metrics = _rates("pii-provider", _view(memorised, base, tokenizer, log))
    assert metrics["extraction.rate"].value == pytest.approx(3 / 6)  # 3 of the members' 6 items were uploaded
    assert metrics["extraction.nonmember_rate"].value == 0.0 and metrics["extraction.rate"].extra["floor"] == 0.0


# --- access: the tier refuses what it does not grant ----------------------------------------------
def test_closed_tiers_refuse_the_extraction_attacks_whose_access_they_do_not_grant(tmp_path):
    from bench.engine.runner import plan
    from tests.helpers import make_scenario

    attacks = ["extract-prefix", "extract-generate", "pii-extract", "pii-reconstruct", "pii-infer", "pii-provider"]
    task = {"name": "synthetic-instructions", "params": {"max_length": 40}}  # textual prompts train instructions
    black = plan(make_scenario(tmp_path, tier="black-box", method="textual-prompt", task=task, attacks=attacks))
    assert sorted(a.name for a in black.attacks) == ["extract-prefix", "pii-extract", "pii-provider", "pii-reconstruct"]
    assert {name for name, _ in black.refused} == {"extract-generate", "pii-infer"}
    assert all("logits" in why for _, why in black.refused)
    gray = plan(make_scenario(tmp_path, tier="gray-box", method="provider-tuning", task=task, attacks=attacks))
    assert not gray.refused


# --- reporting: the extraction role comes from the declared family, not the attack's name -----------
def _extraction_run(defenses: str, seed: int, rate: float, base: float) -> list[dict]:
    from report_helpers import run_rows

    name = f"t4x[defenses={defenses},attacks=leak-anything]"  # a name no prefix rule knows
    metrics = {("none", "utility.accuracy"): 0.9, ("leak-anything", "extraction.rate"): rate,
               ("leak-anything", "extraction.base_rate"): base}
    extras = {("leak-anything", "extraction.rate"): {"floor": base, "family": "extraction", "role": "extraction"},
              ("leak-anything", "extraction.base_rate"): {"family": "extraction", "role": "extraction"}}
    rows = run_rows(name, seed, defenses=defenses, metrics=metrics, extras=extras)
    rows[0]["extra"]["attack_families"] = {"leak-anything": "extraction"}
    rows[0]["extra"]["attack_roles"] = {"leak-anything": "extraction"}
    return rows


def test_table4_files_an_attack_under_its_declared_family_and_measures_above_its_floor():
    from bench.reporting import leaderboard, paper4, table4

    rows = []
    for seed, jitter in enumerate((0.0, 0.02, -0.02, 0.01, -0.01)):
        rows += _extraction_run("none", seed, rate=0.70 + jitter, base=0.10)
        rows += _extraction_run("dp-local", seed, rate=0.12 + jitter / 4, base=0.10)
    board = leaderboard.build(rows)
    assert {r["extraction_attack"] for r in board} == {"leak-anything"}
    assert table4.roles_of_run(board[0]) == ["extraction"]
    [cell] = table4.build(board, paper=paper4.annotate, stored=table4.floors(rows))  # as the report calls it
    assert (cell.role, cell.metric) == ("extraction", "extraction.rate")
    assert cell.advantage_without == pytest.approx(0.60) and cell.advantage_with == pytest.approx(0.02)
    assert cell.verdict == "mitigates"
    assert (cell.paper, cell.comparison) == ("applies", "agree")  # the DP mark read as covering extraction
    assert paper4.paper_mark("lora", DefenseFamily.PII_SCRUBBING)[0] == "not stated"


# --- end to end through the runner: the provider's log, with and without scrubbing ------------------
@pytest.mark.parametrize("defenses", [[], ["scrub-pii"]])
def test_the_provider_log_holds_the_clients_pii_unless_they_scrub_it(tmp_path, defenses):
    from bench.engine.runner import execute
    from tests.helpers import make_scenario

    scenario = make_scenario(tmp_path, tier="gray-box", method="provider-tuning", defenses=defenses,
                             task={"name": "synthetic-instructions", "params": {"max_length": 40}},
                             federation={"clients": 2, "clients_per_round": 2, "rounds": 1, "local_steps": 1,
                                         "batch_size": 2, "examples_per_client": 6, "eval_examples": 4,
                                         "mia_candidates": 4},
                             attacks=["pii-provider"])
    rows = {(r.attack, r.metric): r for r in execute(scenario, 0)}
    rate = rows[("pii-provider", "extraction.rate")]
    assert rate.extra["floor"] == 0.0 and rate.extra["family"] == "extraction"
    egress = rows[("none", "privacy.egress_pii_fraction")].value
    if defenses:
        assert rate.value == 0.0 and egress == 0.0
        assert rows[("none", "privacy.residual_pii_fraction")].value < 1.0
    else:
        assert rate.value == 1.0 and egress == 1.0  # every uploaded record carried its PII to the provider
        assert rows[("none", "privacy.egress_pii_items")].value > 0


def test_the_strongest_extraction_attack_is_the_one_furthest_above_its_own_floor():
    """pii-infer picks among 10 candidates: its base model already scores ~0.13. pii-extract's floor is 0.
    A run where pii-infer merely matches its floor and pii-extract finds some PII must headline
    pii-extract (a raw maximum named pii-infer, and Table 4 then read an advantage of 0)."""
    from report_helpers import run_rows

    from bench.reporting import leaderboard, table4

    metrics = {("none", "utility.rouge_l"): 0.5, ("pii-infer", "extraction.rate"): 0.133,
               ("pii-extract", "extraction.rate"): 0.05, ("mia-loss", "mia.auc"): 0.6}
    extras = {("pii-infer", "extraction.rate"): {"floor": 0.133, "family": "extraction"},
              ("pii-extract", "extraction.rate"): {"floor": 0.0, "family": "extraction"}}
    rows = run_rows("t4x[attacks=pii-extract+pii-infer]", 0, metrics=metrics, extras=extras)
    rows[0]["extra"]["attack_families"] = {"pii-extract": "extraction", "pii-infer": "extraction"}
    [row] = leaderboard.build(rows)
    assert row["extraction_attack"] == "pii-extract" and row["extraction.rate"] == pytest.approx(0.05)
    assert row["mia_attack"] == "mia-loss"  # families without stored floors: ranked above their chance level
    assert table4._advantage(row, "extraction", {}, table4.floors(rows)) == pytest.approx(0.05)


def test_table4_reports_what_scrubbing_leaves_behind_and_the_providers_log():
    """A scrub-pii cell at a closed tier carries the residual identifier fraction of the scrubbed data, the
    log's PII fraction without -> with the defense, and the utility cost; the markdown shows them."""
    from report_helpers import run_rows

    from bench.reporting import leaderboard, table4
    from bench.reporting.report import cell_text

    rows = []
    for seed in range(3):
        for defenses, rate, egress, utility in (("none", 0.55 + seed / 100, 0.58, 0.57), ("scrub-pii", 0.0, 0.0, 0.53)):
            metrics = {("none", "utility.rouge_l"): utility, ("pii-provider", "extraction.rate"): rate,
                       ("none", "privacy.egress_pii_fraction"): egress}
            if defenses == "scrub-pii":
                metrics[("none", "privacy.residual_pii_fraction")] = 0.06
            extras = {("pii-provider", "extraction.rate"): {"floor": 0.0, "family": "extraction"}}
            name = f"t4x[defenses={defenses},attacks=pii-provider]"
            run = run_rows(name, seed, tier="black-box", method="textual-prompt", defenses=defenses,
                           metrics=metrics, extras=extras)
            run[0]["extra"]["attack_families"] = {"pii-provider": "extraction"}
            rows += run
    [cell] = table4.build(leaderboard.build(rows), stored=table4.floors(rows))
    assert (cell.defense, cell.role, cell.verdict) == ("scrub-pii", "extraction", "mitigates")
    assert cell.residual_pii_fraction == pytest.approx(0.06)
    assert (cell.egress_pii_without, cell.egress_pii_with) == (pytest.approx(0.58), pytest.approx(0.0))
    assert cell.utility_change == pytest.approx(-0.04)
    assert "PII left 0.06" in cell_text(cell) and "PII in log 0.58→0.00" in cell_text(cell)


@pytest.mark.parametrize(("teacher", "proxy", "leaks"), [("memorised", "members", True), ("memorised", "public", True),
                                                    ("scrubbed", "public", False)])
def test_a_kd_server_infers_a_clients_pii_from_a_copy_distilled_from_its_logits(models, teacher, proxy, leaks):
    """KD's reconstruction channel: a copy distilled from a memorising client's shared logits picks the
    client's PII (rate 1 against the broadcast model's floor), both when the proxy set is the client's own
    records and when it is disjoint public text: after a public record's "Patient" the client's next-token
    distribution puts its mass on the names it memorised. A client trained on scrubbed records gives the
    copy nothing to pick with (at most chance)."""
    from bench.api.layout import ParameterLayout
    from bench.api.transcript import RoundRecord
    from bench.engine.protocols.kd import shared_logits

    base, memorised, scrubbed, tokenizer = models
    client = memorised if teacher == "memorised" else scrubbed
    server = OpenModel(copy.deepcopy(base.model), None, base.task, tokenizer)
    server.layout = ParameterLayout.of(list(server.model.named_parameters()))
    records = [{"text": t, "label": 0} for t in (MEMBERS if proxy == "members" else PUBLIC)]
    batch = base.task.collate(records, tokenizer, torch.device("cpu"))
    sent = shared_logits(client.model, batch, temperature=2.0, top_k=0)
    round_record = RoundRecord(round=0, sampled=[0], global_before=server.get_flat().clone(), transmitted={0: sent},
                               channel={"proxy": records, "temperature": 2.0})
    view = _view(server, base, tokenizer)
    view.vantage, view.rounds = "server", [round_record]
    metrics = _rates("pii-infer-kd", view, choices=2, steps=60, lr=3e-3)
    rate, floor = metrics["extraction.rate"].value, metrics["extraction.rate"].extra["floor"]
    assert floor <= 0.5 + 1e-9  # the broadcast (base) model picks among 2 no better than chance here
    assert rate >= 0.8 if leaks else rate <= 0.5 + 1e-9
    assert (server.get_flat() - round_record.global_before).abs().max() == 0  # the attack restores the model
