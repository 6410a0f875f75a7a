"""DAGER against bottleneck adapters (issue 15): an honest server reads the batch back through the first
attention adapter's up projection while the batch's adapter inputs are fewer than the bottleneck size,
and reports nothing, rather than guesses, once they fill it.

One real FedSGD round of one client on a tiny decoder trained with the registered ``adapter`` method
(``bench.testing.inversion``); the attack sees the server's view, the oracle is the batch itself.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from attacks.inversion._layers import output_gradient_dimension, trainable_maps
from attacks.inversion.dager import Dager
from bench.api.registry import METHODS, load_plugins
from bench.testing.inversion import TinyArch, lm_example_losses, random_sequences, run_round, tiny_decoder

ARCH = TinyArch(family="gpt2", vocab=500, hidden=64, layers=2, heads=2, positions=32)


def adapter_round(size: int, batch: int, length: int, arch: TinyArch = ARCH, seed: int = 1):
    """One FedSGD round (lr 0.1, as Table 4's inversion grid) of one client on ``batch`` random sequences."""
    load_plugins()
    cls = METHODS.get("adapter")
    method = cls(cls.Config(size=size))
    method.prepare(tiny_decoder(arch, seed=0), SimpleNamespace(kind="language"), torch.Generator().manual_seed(0))
    method.task_loss = lm_example_losses
    data = random_sequences(batch, length, arch.vocab, torch.Generator().manual_seed(seed))
    view, truth = run_round(method, {0: data}, lr=0.1)
    return method, view, truth


@pytest.mark.parametrize(("family", "batch"), [("gpt2", 1), ("gpt2", 2), ("llama", 1)])
def test_dager_recovers_the_batch_from_an_adapter_update_while_its_inputs_fit_the_bottleneck(family, batch):
    # batch x 7 inputs that receive gradient (the last token only labels) < size 32: the up projection's
    # gradient holds every relu(W_down h_t), so the batch is recovered exactly, its last token included
    # (the trained final norm's gradient names it)
    arch = TinyArch(family=family, vocab=500, hidden=64, layers=2, heads=2, positions=32)
    method, view, truth = adapter_round(32, batch, 8, arch)
    before = method.get_flat().clone()
    prediction = Dager(Dager.Config()).run(view, torch.Generator())
    assert sorted(prediction.sequences[(0, 0)]) == sorted(truth.client_batches[(0, 0)])
    assert torch.equal(method.get_flat(), before) and method.model.training  # state restored


def test_dager_reports_nothing_once_the_inputs_fill_the_bottleneck():
    # 2 x 9 inputs > size 16: the span is one direction short of full (rank 15 of 16), and that direction
    # lies on units nearly every candidate leaves silent, so random text would pass an uncalibrated check;
    # the attack must return no reconstruction rather than a guess
    _, view, truth = adapter_round(16, 2, 10)
    assert Dager(Dager.Config()).run(view, torch.Generator()).sequences == {(0, 0): []}
    # 1 x 11 inputs > size 8: the same at batch 1
    _, view, _ = adapter_round(8, 1, 12)
    assert Dager(Dager.Config()).run(view, torch.Generator()).sequences == {(0, 0): []}


def test_the_hidden_width_bounds_the_span_too():
    # 8 x 13 = 104 inputs < size 128 but > the up projection's output width 64: its gradient has rank 64
    # and spans only part of the inputs' span, so the map is not used and nothing is reported
    _, view, _ = adapter_round(128, 8, 14)
    assert Dager(Dager.Config()).run(view, torch.Generator()).sequences == {(0, 0): []}


def test_trainable_maps_come_in_forward_order_and_only_trained_ones():
    method, view, _ = adapter_round(16, 1, 4)
    grads = method.unflatten(view.rounds[0].transmitted[0])
    names = [name for name, _ in trainable_maps(method.model, grads)]
    blocks = [f"transformer.h.{i}.adapter_{slot}.{part}" for i in range(ARCH.layers) for slot in ("attention", "mlp")
              for part in ("down", "up")]
    assert names == blocks  # the frozen attention and MLP projections are not among them
    assert trainable_maps(method.model, {}) == []


@pytest.mark.parametrize(("family", "dimension"), [("gpt2", 63), ("llama", 64)])
def test_output_gradients_fill_one_dimension_less_behind_a_layernorm(family, dimension):
    # every path from a GPT-2 block to the loss passes a LayerNorm, which removes the mean direction:
    # a width-64 map's output gradients fill 63 dimensions (RMSNorm does not centre: Llama's fill 64),
    # so a span of rank 63 there is already a subspace of the inputs' span, not a sign of identifiability
    arch = TinyArch(family=family, vocab=500, hidden=64, layers=2, heads=2, positions=32)
    method, _, _ = adapter_round(16, 1, 4, arch)
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in method.model.named_parameters()}
    ids = torch.randint(arch.vocab, (64, 16), generator=torch.Generator().manual_seed(0))
    ups = [m for name, m in method.model.named_modules() if name.endswith("adapter_attention.up")]
    assert [output_gradient_dimension(method.model, m, ids, torch.Generator().manual_seed(0)) for m in ups] == \
        [dimension] * arch.layers
    after = dict(method.model.named_parameters())
    assert all((after[n].grad is None) if g is None else torch.equal(after[n].grad, g) for n, g in grads.items())
