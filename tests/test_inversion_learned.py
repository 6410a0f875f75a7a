"""The learned inversion (``inversion-learned``, Learning To Invert) against prompt tuning's update.

One real FedSGD round on a tiny decoder with a soft prompt (``bench.testing.inversion``); the attack
trains on public records of the same template and reads each client's batch from its update.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from attacks.inversion import learned
from bench.api.vocabulary import TaskKind
from bench.scoring.score import score
from bench.testing.inversion import TinyArch, collate, lm_example_losses, run_round, tiny_decoder
from tests.test_inversion_methods import method_round

ARCH = TinyArch(family="gpt2", vocab=100, hidden=32, layers=2, heads=2, positions=32)
TEMPLATE = [10, 11, 12, 13]


def notes(count: int, seed: int) -> list[list[int]]:
    """Records of one template with three private tokens, each one of 16 (as a note's name, number and age):
    4,096 combinations, so a held-out record rarely equals a client's."""
    rng = torch.Generator().manual_seed(seed)
    return [TEMPLATE + [first + int(torch.randint(16, (1,), generator=rng)) for first in (20, 40, 60)] for _ in range(count)]


def with_task(view, public: list[list[int]]):
    """The view of ``method_round`` with a language-modelling task over token records and public records."""

    def collate_records(records, tokenizer, device):
        batch = collate([r["tokens"] for r in records])
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]).contiguous()
        return batch

    view.final_model.task = SimpleNamespace(kind=TaskKind.LANGUAGE, config=SimpleNamespace(max_length=7),
                                            collate=collate_records, example_losses=lm_example_losses)
    view.auxiliary = [{"tokens": t} for t in public]
    return view


def prompt_round(clients: dict[int, list[list[int]]]):
    """A soft prompt of 4 virtual tokens on the tiny decoder, one FedSGD round of every client (lr 0.1)."""
    method, _, _ = method_round("prompt-tuning", {"num_virtual_tokens": 4}, sequences=clients[0],
                                model=tiny_decoder(ARCH, seed=0), lr=0.1)
    view, truth = run_round(method, clients, lr=0.1)
    return method, view, truth


def test_vmapped_gradients_equal_one_sequence_at_a_time():
    method, view, _ = prompt_round({0: notes(1, 1)})
    view = with_task(view, notes(20, 2))
    batches = [view.task.collate([r], None, "cpu") for r in view.auxiliary]
    state = view.rounds[0].global_before
    whole = learned._Sketch.draw(int(state.numel()), 10**9, torch.Generator())
    vmapped, tokens = learned._per_sequence(method, view, batches, state, whole)
    with learned.model_at(method, state) as model, torch.enable_grad():
        loop = torch.stack([learned._one_gradient(view, model, method.named_trainable, b) for b in batches])
    assert tokens == [r["tokens"] for r in view.auxiliary]
    assert torch.allclose(vmapped, loop, atol=1e-6, rtol=1e-5)
    assert float(loop.abs().max()) > 1e-3  # the soft prompt has a gradient at all


def test_the_matched_loss_does_not_depend_on_the_order_of_a_batch():
    logits = torch.randn(3, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(7, (3, 2, 5), generator=torch.Generator().manual_seed(1))
    swapped = targets.flip(1)
    assert torch.allclose(learned._matched_loss(logits, targets), learned._matched_loss(logits, swapped))
    # and it is the lower of the two assignments, not their mean
    log_probs = logits.log_softmax(-1)
    straight = -log_probs.gather(-1, targets.unsqueeze(-1)).sum((1, 2, 3))
    crossed = -log_probs.gather(-1, swapped.unsqueeze(-1)).sum((1, 2, 3))
    assert torch.allclose(learned._matched_loss(logits, targets), torch.minimum(straight, crossed).sum() / 30)


def test_the_sketch_keeps_a_small_gradient_whole_and_adds_signed_coordinates_into_buckets():
    flat = torch.arange(6.0)
    assert torch.equal(learned._Sketch.draw(6, 8, torch.Generator())(flat), flat)
    sketch = learned._Sketch.draw(6, 2, torch.Generator().manual_seed(0))
    expected = torch.zeros(2)
    for i in range(6):
        expected[int(sketch.bucket[i])] += float(sketch.sign[i]) * float(flat[i])
    assert torch.equal(sketch(flat), expected)


def test_it_reads_private_tokens_back_from_soft_prompt_updates_where_guessing_cannot():
    # 8 clients, one record each; the public records share the template, not the private triple. The best
    # guess from held-out records matches the template and one or two private tokens, so a record counts as
    # recovered (inversion.recovered) only when more of its private tokens are read from its update.
    _, view, truth = prompt_round({c: notes(1, 100 + c) for c in range(8)})
    view = with_task(view, notes(1000, 3))
    truth.held_out = notes(64, 4)
    attack = learned.LearnedInversion(learned.LearnedInversion.Config(
        rounds=(0,), samples=0, epochs=300, batches=64, width=128, token_width=16, lr=1e-2))
    prediction = attack.run(view, torch.Generator().manual_seed(0))
    assert all(len(prediction.sequences[(0, c)]) == 1 for c in range(8))
    values = {m.name: m.value for m in score(prediction, truth)}
    assert values["inversion.recovered"] >= 0.625  # 0.875-1.0 with client records of data seeds 100, 110, 120


def test_a_masked_message_gives_an_empty_reconstruction():
    _, view, _ = prompt_round({0: notes(1, 1)})
    view = with_task(view, notes(20, 2))
    record = view.rounds[0]
    record.transmitted[0] = torch.randint(0, 2**31, record.transmitted[0].shape, generator=torch.Generator().manual_seed(0))
    attack = learned.LearnedInversion(learned.LearnedInversion.Config(samples=0, epochs=1, batches=1))
    assert attack.run(view, torch.Generator()).sequences == {(0, 0): []}


def test_a_memoised_decoder_reads_exactly_what_a_fresh_one_reads(tmp_path, monkeypatch):
    # every defense cell of a seed trains the same decoder; the memo must give the same reconstruction and
    # leave the attack's generator where training would have
    monkeypatch.setenv("TIERBENCH_CACHE", str(tmp_path))
    _, view, _ = prompt_round({c: notes(1, 100 + c) for c in range(2)})
    view = with_task(view, notes(200, 3))
    config = learned.LearnedInversion.Config(samples=0, epochs=20, batches=16, width=32, token_width=8)
    runs = []
    for _ in range(2):
        rng = torch.Generator().manual_seed(0)
        runs.append((learned.LearnedInversion(config).run(view, rng).sequences, rng.get_state()))
    assert len(list((tmp_path / "memo" / learned.MEMO_KIND).glob("*.pt"))) == 1
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    # another defense trains the model elsewhere from the same broadcast state: still the same decoder
    # (the key reads the weights at the broadcast state, not the live ones)
    view.final_model.set_flat(view.final_model.get_flat() + 1.0)
    rng = torch.Generator().manual_seed(0)
    assert learned.LearnedInversion(config).run(view, rng).sequences == runs[0][0]
    assert len(list((tmp_path / "memo" / learned.MEMO_KIND).glob("*.pt"))) == 1
    # a different seed is another decoder, not a hit
    learned.LearnedInversion(config).run(view, torch.Generator().manual_seed(1))
    assert len(list((tmp_path / "memo" / learned.MEMO_KIND).glob("*.pt"))) == 2
