"""Gradient-inversion attacks (attacks/inversion/): contracts and exact-recovery oracles.

Every case runs one real federated round on a tiny decoder built from a config
(``bench.testing.inversion``) and compares the attack's output with the batch the client trained on.
"""

from __future__ import annotations

import math

import pytest
import torch

from attacks.inversion._common import observed_gradient, trainable_names
from attacks.inversion._decode import Grown, Growth, _passes, refine_by_energy, select_sequences
from attacks.inversion._labels import last_tokens
from attacks.inversion._span import (
    Probe,
    SpanBasis,
    SpanCheck,
    chance_distance,
    rounding_noise,
    span_basis,
    span_distance,
)
from attacks.inversion.dager import Dager
from attacks.inversion.optim import GradientMatching
from attacks.inversion.tokens import EmbeddingRows
from bench.api.predictions import Reconstruction
from bench.api.vocabulary import AGGREGATE_CLIENT
from bench.scoring.score import score
from bench.testing.inversion import TinyArch, build_method, random_sequences, run_round

SMALL = {"vocab": 500, "hidden": 64, "layers": 2, "heads": 2, "positions": 32}


def arch(family: str, **overrides) -> TinyArch:
    return TinyArch(family=family, **{**SMALL, **overrides})


def one_round(family="gpt2", batch=2, length=8, clients=1, lora_rank=0, seed=1, **round_kwargs):
    method = build_method(arch(family), lora_rank=lora_rank)
    rng = torch.Generator().manual_seed(seed)
    data = {c: random_sequences(batch, length, SMALL["vocab"], rng) for c in range(clients)}
    view, truth = run_round(method, data, **round_kwargs)
    return method, view, truth


def metrics(prediction, truth):
    return {m.name: m.value for m in score(prediction, truth)}


# --- span machinery ----------------------------------------------------------------------------------
def test_span_basis_finds_rank_and_distances():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(5, 40, generator=generator)  # 5 inputs in R^40
    gradient = inputs.T @ torch.randn(5, 30, generator=generator)  # columns span the inputs
    basis = span_basis(Probe(gradient), rank_tol=1e-6)
    assert basis.rank == 5 and basis.informative
    assert span_distance(basis, inputs).max() < 1e-5
    outsider = torch.randn(3, 40, generator=generator)
    assert span_distance(basis, outsider).min() > 0.5  # ~sqrt(35/40) for random vectors
    # a full-rank matrix has no informative span
    assert not span_basis(Probe(torch.randn(40, 80, generator=generator)), 1e-6).informative


def test_rounding_noise_sets_the_rank_floor():
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(64, 96, generator=generator)
    signal = 1e-3 * torch.randn(64, 3, generator=generator) @ torch.randn(3, 96, generator=generator)
    update = (weights + signal) - weights  # float32 subtraction: the rounding a server really sees
    assert span_basis(Probe(update), rank_tol=1e-12).rank > 3  # rounding noise fills the spectrum
    noise = rounding_noise(weights + update)
    assert span_basis(Probe(update, noise=noise), rank_tol=1e-12).rank == 3


def test_chance_distance_shrinks_towards_full_rank():
    generator = torch.Generator().manual_seed(0)
    wide = span_basis(Probe(torch.randn(64, 10, generator=generator)), 1e-6)
    narrow = span_basis(Probe(torch.randn(64, 60, generator=generator)), 1e-6)
    assert chance_distance(narrow, 2000, 0.01) < chance_distance(wide, 2000, 0.01)
    assert chance_distance(wide, 2000, 0.01) < math.sqrt(54 / 64)


def test_selection_prefers_sequences_that_explain_the_span():
    true = [[1, 2, 3, 4], [5, 6, 7, 8]]
    spurious = [1, 2, 9]  # a branch off a true prefix: one new layer-1 input
    grown = Grown([spurious] + true, [0.5, 1.0, 1.5])
    assert select_sequences(grown, rank=8, limit=10) == true  # the trie of all three needs 9 inputs
    assert sorted(select_sequences(grown, rank=9, limit=10)) == sorted(true + [spurious])
    assert select_sequences(grown, rank=9, limit=2) == true  # at most as many as the batch holds


def _templated_span(true, weak, generator, dim=48, noise=1e-3):
    """Layer-1 inputs of prefixes and a noisy gradient of the ``true`` batch, as ``_decode`` sees them.

    A prefix's input is its last token's vector at that position plus a small term from the whole
    prefix (what attention brings in), so a wrong prefix ending in a right token sits near the span.
    Inputs of prefixes in ``weak`` get a gradient of only a few noise edges (confidently predicted)."""
    vectors = {}

    def vector(prefix):
        key = (len(prefix), prefix[-1])
        vectors.setdefault(key, torch.randn(dim, generator=generator, dtype=torch.float64))
        vectors.setdefault(prefix, torch.randn(dim, generator=generator, dtype=torch.float64))
        return vectors[key] + 0.03 * vectors[prefix]

    nodes = sorted({tuple(s[: k + 1]) for s in true for k in range(len(s))})
    edge = (dim**0.5 + 64**0.5) * noise
    scale = torch.tensor([3 * edge if node in weak else 100 * edge for node in nodes], dtype=torch.float64)
    inputs = torch.stack([vector(n) / vector(n).norm() for n in nodes])
    outputs = torch.randn(len(nodes), 64, generator=generator, dtype=torch.float64)
    outputs = outputs / outputs.norm(dim=1, keepdim=True) * scale[:, None]
    gradient = inputs.T @ outputs + noise * torch.randn(dim, 64, generator=generator, dtype=torch.float64)
    basis = span_basis(Probe(gradient.float(), noise=torch.full((dim, 64), noise)), 1e-6, noise_margin=2.0)
    rows = lambda s: torch.stack([vector(tuple(s[: k + 1])) for k in range(len(s))])  # noqa: E731
    return SpanCheck([basis], 0.1, 0.01), rows


def test_energy_refinement_recovers_a_weak_template_suffix():
    """Real text (measured on tiny-gpt2, B=2): the second sequence's template suffix carries a
    gradient a few times the rounding noise, so the trie selection (capped at the underestimated rank)
    kept the first sequence alone, and wrong branches reusing the first sequence's suffix looked as
    close to the span as the true one. The unexplained gradient tells them apart."""
    first, second = [1, 2, 3, 4, 5, 6], [1, 7, 8, 9, 4, 5, 6]  # shared start, same template suffix
    weak = {(1, 7, 8, 9, 4), (1, 7, 8, 9, 4, 5), (1, 7, 8, 9, 4, 5, 6)}
    check, rows = _templated_span([first, second], weak, torch.Generator().manual_seed(0))
    wrong = [[1, 7, 3, 4, 5, 6], [1, 7, 8, 9, 4, 5, 10], [1, 2, 8, 9, 4, 5, 6], [1, 7, 8, 9, 5, 6]]
    pool = [first, *wrong, second]
    inputs = [rows(s) for s in pool]
    assert refine_by_energy(pool, [first], check, inputs, limit=2) == [first, second]  # adds the missing one
    assert refine_by_energy(pool, [first], check, inputs, limit=5) == [first, second]  # stops at the noise
    assert refine_by_energy(pool, [first, wrong[0]], check, inputs, limit=2) == [first, second]  # swaps
    assert refine_by_energy(pool, [first, wrong[1]], check, inputs, limit=2) == [first, second]


# --- DAGER -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_dager_recovers_fedsgd_batch_exactly(family):
    method, view, truth = one_round(family, batch=2, length=8)
    before = method.get_flat().clone()
    prediction = Dager(Dager.Config()).run(view, torch.Generator())
    assert sorted(prediction.sequences[(0, 0)]) == sorted(truth.client_batches[(0, 0)])
    assert metrics(prediction, truth)["inversion.exact"] == 1.0
    assert torch.equal(method.get_flat(), before) and method.model.training  # state restored


def test_dager_recovers_sequences_of_different_lengths():
    method = build_method(arch("gpt2"))
    rng = torch.Generator().manual_seed(4)
    data = {0: [random_sequences(1, n, SMALL["vocab"], rng)[0] for n in (5, 9, 7)]}
    view, truth = run_round(method, data)
    prediction = Dager(Dager.Config()).run(view, torch.Generator())
    assert sorted(prediction.sequences[(0, 0)]) == sorted(truth.client_batches[(0, 0)])


def test_dager_returns_nothing_when_the_span_fills_the_width():
    # 4 x 31 = 124 inputs with gradient > width 64: every vector is "in" the span
    _, view, truth = one_round("gpt2", batch=4, length=32)
    prediction = Dager(Dager.Config()).run(view, torch.Generator())
    assert prediction.sequences == {(0, 0): []}


def test_dager_aggregate_target_inverts_the_round_as_one_batch():
    _, view, truth = one_round("gpt2", batch=2, length=6, clients=2)
    attack = Dager(Dager.Config(target="aggregate"))
    assert attack.vantage == "aggregate" and "aggregates" in attack.needs
    prediction = attack.run(view, torch.Generator())
    assert set(prediction.sequences) == {(0, AGGREGATE_CLIENT)}
    assert metrics(prediction, truth)["inversion.exact"] == 1.0


def test_dager_sees_nothing_in_masked_or_encrypted_messages():
    _, view, truth = one_round("gpt2", batch=2, length=8, clients=2)
    record = view.rounds[0]
    generator = torch.Generator().manual_seed(0)
    record.transmitted[0] = torch.randint(0, 2**31, record.transmitted[0].shape, generator=generator)
    record.transmitted[1] = [b"ciphertext"]
    prediction = Dager(Dager.Config()).run(view, torch.Generator())
    assert prediction.sequences == {(0, 0): [], (0, 1): []}


def test_dager_fedavg_small_steps_still_recovered():
    # five local steps: the update is a sum of gradients at drifting weights, checked at the midpoint
    _, view, truth = one_round("gpt2", batch=2, length=8, protocol="fedavg", local_steps=5, lr=1e-3)
    prediction = Dager(Dager.Config()).run(view, torch.Generator())
    assert metrics(prediction, truth)["inversion.exact"] == 1.0


def test_dager_lora_identifiable_only_below_rank():
    # 1 x 7 inputs with gradient < r = 16: the projected span check recovers the sequence
    _, view, truth = one_round("llama", batch=1, length=8, lora_rank=16)
    prediction = Dager(Dager.Config()).run(view, torch.Generator())
    (recovered,) = prediction.sequences[(0, 0)]
    (true,) = truth.client_batches[(0, 0)]
    assert recovered[:-1] == true[:-1]  # the final (label-only) token is a prior guess under LoRA
    # 2 x 7 inputs > r = 4: the LoRA gradients fill their r-dimensional space, nothing is identifiable
    _, view, _ = one_round("llama", batch=2, length=8, lora_rank=4)
    assert Dager(Dager.Config()).run(view, torch.Generator()).sequences == {(0, 0): []}


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        Dager.Config(target="everyone")
    with pytest.raises(ValueError):
        Dager.Config(span_threshold=0.0)


# --- last token (labels) -----------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_last_tokens_recovered_from_output_gradient(family):
    method, view, truth = one_round(family, batch=3, length=6)
    sequences = truth.client_batches[(0, 0)]
    update = view.rounds[0].transmitted[0]
    observed = method.unflatten(observed_gradient(update, view.federation))
    method.model.eval()
    found = last_tokens(method.model, [s[:-1] for s in sequences], observed, trainable_names(method))
    assert found == [s[-1] for s in sequences]


# --- bag of tokens -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family, last_seen", [("gpt2", True), ("llama", False)])
def test_tokens_recovers_the_bag(family, last_seen):
    # tied (GPT-2): input and label rows stand out by norm, so every token; untied (Llama): exactly
    # the input rows, so every token but each sequence's final, label-only one
    _, view, truth = one_round(family, batch=3, length=8)
    prediction = EmbeddingRows(EmbeddingRows.Config()).run(view, torch.Generator())
    bag = set(prediction.sequences[(0, 0)][0])
    assert bag == {t for s in truth.client_batches[(0, 0)] for t in (s if last_seen else s[:-1])}


def test_tokens_empty_when_embeddings_are_frozen():
    _, view, _ = one_round("llama", batch=2, length=8, lora_rank=8)
    assert EmbeddingRows(EmbeddingRows.Config()).run(view, torch.Generator()).sequences == {(0, 0): []}


# --- optimisation attack -----------------------------------------------------------------------------
def test_optim_matches_gradient_and_beats_chance():
    _, view, truth = one_round("gpt2", batch=1, length=6)
    attack = GradientMatching(GradientMatching.Config(steps=30, discrete_every=10))
    prediction = attack.run(view, torch.Generator().manual_seed(0))
    (recovered,) = prediction.sequences[(0, 0)]
    assert len(recovered) == 6  # length inferred from the position-embedding gradient
    # restricted to the recovered bag, most tokens land; chance over a 500-token vocabulary is ~0
    assert metrics(prediction, truth)["inversion.token_f1"] >= 0.5


def test_optim_runs_on_lora_without_embedding_gradients():
    _, view, _ = one_round("llama", batch=2, length=5, lora_rank=4)
    attack = GradientMatching(GradientMatching.Config(steps=4, discrete_every=2, seq_len=5))
    prediction = attack.run(view, torch.Generator().manual_seed(0))
    sequences = prediction.sequences[(0, 0)]
    assert len(sequences) == 2 and all(len(s) == 5 for s in sequences)
    assert isinstance(prediction, Reconstruction)


def test_tokens_find_nothing_in_masked_messages():
    _, view, truth = one_round("llama", batch=2, length=8)
    record = view.rounds[0]
    record.transmitted[0] = torch.randint(0, 2**31, record.transmitted[0].shape, generator=torch.Generator().manual_seed(0))
    prediction = EmbeddingRows(EmbeddingRows.Config()).run(view, torch.Generator())
    assert metrics(prediction, truth)["inversion.token_f1"] < 0.05


def test_dager_can_grow_sequences_at_a_deeper_layer():
    method = build_method(arch("gpt2", layers=3))
    data = {0: random_sequences(2, 8, SMALL["vocab"], torch.Generator().manual_seed(4))}
    view, truth = run_round(method, data)
    prediction = Dager(Dager.Config(growth_layer=2)).run(view, torch.Generator())
    assert metrics(prediction, truth)["inversion.exact"] == 1.0
    beyond = Dager(Dager.Config(growth_layer=5)).run(view, torch.Generator())  # the model has 3 layers
    assert beyond.sequences[(0, 0)] == []
    with pytest.raises(ValueError, match="growth_layer"):
        Dager.Config(growth_layer=0)


def _check_spanning(*axes, dim=16):
    basis = torch.eye(dim)[list(axes)]
    return SpanCheck([SpanBasis(basis, None, len(axes), dim)], threshold=0.1, false_positives=0.01)


def test_an_extension_must_pass_every_checked_layer():
    growth_layer, deeper = _check_spanning(0, 1, 2), _check_spanning(0, 1, 3)
    inputs = torch.eye(16)[[0, 2]]  # the second is in the growth layer's span only
    reference = torch.full((2,), 1e-3)
    alone, _ = _passes(Growth((growth_layer,), 40.0, 8, 8), [inputs], None, reference)
    both, _ = _passes(Growth((growth_layer, deeper), 40.0, 8, 8, (1.0, 1.0)), [inputs, inputs], None, reference)
    assert alone.tolist() == [True, True] and both.tolist() == [True, False]


def test_dager_with_a_confirming_layer_still_recovers_the_batch():
    method = build_method(arch("gpt2", layers=3))
    data = {0: random_sequences(2, 8, SMALL["vocab"], torch.Generator().manual_seed(4))}
    view, truth = run_round(method, data)
    prediction = Dager(Dager.Config(confirm_layer=2)).run(view, torch.Generator())
    assert metrics(prediction, truth)["inversion.exact"] == 1.0
    with pytest.raises(ValueError, match="confirm_layer"):
        Dager.Config(growth_layer=2, confirm_layer=2)


# --- the width-64 zoo GPT-2 (Table 4 poisoning's model), FedSGD, real notes --------------------------
WIDTH64 = {"name": "tiny-gpt2", "params": {"hidden": 64, "layers": 2, "vocab": 1024}}
NOTES8 = {"name": "synthetic-clinical", "params": {"num_classes": 3, "max_length": 8, "objective": "language"}}


def zoo_notes_metrics(tmp_path, seed, clients=2, examples=80):
    """DAGER on one FedSGD round of the width-64 zoo GPT-2, batch 4 x 8 tokens of clinical notes, every
    client of the round attacked; the runner's own pieces, as ``tests/benchmarks`` do."""
    from bench.engine import federation as fl
    from bench.engine.runner import plan, prepare
    from bench.engine.views import ViewBuilder
    from tests.helpers import make_scenario

    federation = {"clients": clients, "clients_per_round": clients, "rounds": 1, "batch_size": 4, "lr": 0.01,
                  "protocol": "fedsgd", "examples_per_client": examples, "eval_examples": 16}
    (tmp_path / str(seed)).mkdir()
    scenario = make_scenario(tmp_path / str(seed), model=WIDTH64, task=NOTES8, method="fft", federation=federation,
                             attacks=["inversion-dager"], seeds=[seed])
    built = plan(scenario)
    prepared = prepare(scenario, seed, built)
    fl.run(prepared.fed, prepared.transcript, prepared.truth)
    views = ViewBuilder(scenario, seed, built, prepared.transcript, prepared.tokenizer, prepared.clients,
                        prepared.task_data, prepared.truth)
    attack = built.attacks[0]
    return metrics(attack.run(views.for_attack(attack), torch.Generator().manual_seed(seed)), views.truth)


@pytest.mark.slow  # pretrains the width-64 zoo model on first use (~40 s), then ~3 s a seed
def test_dager_recovers_notes_exactly_on_the_width64_zoo_gpt2(tmp_path):
    # Table 4 poisoning's federation shape: 4 clients of 12 notes, batch 4, all attacked, 9 seeds.
    found = [zoo_notes_metrics(tmp_path, seed, clients=4, examples=12) for seed in range(9)]
    exact = sum(m["inversion.exact"] for m in found) / len(found)
    assert exact >= 0.9
    assert min(m["inversion.rouge1_text"] for m in found) > 0.9  # the scorer decodes with the zoo tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("seed", [15, 25])
def test_final_tokens_pair_with_their_sequences_on_the_width64_zoo_gpt2(tmp_path, seed):
    # Before the last block's MLP atom (``_labels._Pairing``) these two batches came back with two
    # sequences' final tokens swapped (each final token also an input of the batch): exact 0.5.
    assert zoo_notes_metrics(tmp_path, seed)["inversion.exact"] == 1.0
