"""The malicious-server imprint attack on adapters (``attacks.inversion.trap``): its oracle, what the
tampered broadcast may touch, and its refusals."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from attacks.inversion._common import observed_gradient
from attacks.inversion.trap import Bins, TrapInversion, find_bottlenecks, public_inputs
from bench.api.attack import ServerHold
from bench.api.errors import IncompatibleError
from bench.api.registry import METHODS, load_plugins
from bench.api.transcript import GroundTruth, Transcript
from bench.engine import federation as fl
from bench.testing.inversion import TinyArch, build_method, collate, lm_example_losses, random_sequences, tiny_decoder
from bench.world.partition import ClientData

ARCH = TinyArch(family="gpt2", vocab=60, hidden=32, layers=2, heads=2, positions=16)


def adapter_method(size: int):
    load_plugins()
    cls = METHODS.get("adapter")
    method = cls(cls.Config(size=size))
    method.prepare(tiny_decoder(ARCH, seed=0), SimpleNamespace(kind="language"), torch.Generator().manual_seed(0))
    method.task_loss = lm_example_losses
    return method


def trapped_round(size: int, batch: list[list[int]], attack: TrapInversion | None = None):
    """One FedSGD round of one client under the malicious server; the broadcast state and the update."""
    method = adapter_method(size)
    attack = attack or TrapInversion(TrapInversion.Config())
    public = random_sequences(16, 8, ARCH.vocab, torch.Generator().manual_seed(7))
    settings = SimpleNamespace(rounds=1, clients=1, clients_per_round=1, protocol="fedsgd", local_steps=1,
                               batch_size=len(batch), lr=0.1, optimizer="sgd", server_lr=1.0, client_batch="auto")
    fed = fl.Federation(method=method, model=method.model, collate=collate, settings=settings, seed_parts=(0,),
                        clients=[ClientData(members=batch, nonmembers=[])], attackers=[attack], public=public,
                        keep=frozenset({"client_updates", "global_states", "client_batches"}))
    transcript = Transcript()
    fl.run(fed, transcript, GroundTruth())
    record = transcript.rounds[0]
    return method, attack, record.global_before, record.transmitted[0], settings


def true_inputs(method, state: torch.Tensor, batch: list[list[int]]) -> list[torch.Tensor]:
    """Each adapter's input on the client's batch at the broadcast state, (tokens, width)."""
    adapters = find_bottlenecks(method.model, {id(p): n for n, p in method.named_trainable})
    seen: dict[int, torch.Tensor] = {}
    hooks = [a.module.register_forward_pre_hook(lambda _m, args, k=k: seen.__setitem__(k, args[0].detach()))
             for k, a in enumerate(adapters)]
    method.set_flat(state)
    with torch.no_grad():
        method.model(**{k: v for k, v in collate(batch).items() if k != "labels"})
    for hook in hooks:
        hook.remove()
    return [seen[k].reshape(-1, seen[k].shape[-1]) for k in range(len(adapters))]


def test_a_bin_holding_one_input_returns_it_and_the_table_names_its_token():
    # the oracle: one sequence of 7 random tokens, 64 bins per adapter; an input alone in its bin is the
    # ratio of the consecutive rows' gradient differences (Fowl et al.), and every recovered input names
    # its true (token, position) by the table of the broadcast model
    sequence = random_sequences(1, 7, ARCH.vocab, torch.Generator().manual_seed(3))
    method, attack, state, update, settings = trapped_round(64, sequence)
    names = {id(p): n for n, p in method.named_trainable}
    broadcast, grads = method.unflatten(state), method.unflatten(observed_gradient(update, settings))
    adapters = [a for a in find_bottlenecks(method.model, names) if bool(broadcast[a.up_weight].abs().max() > 0)]
    assert len(adapters) == ARCH.layers  # the feed-forward adapters; those after (constant) attention stay honest
    inputs = true_inputs(method, state, sequence)
    alone = 0
    for adapter in adapters:
        k = find_bottlenecks(method.model, names).index(adapter)
        bins = Bins.of(grads[adapter.down_weight], grads[adapter.down_bias], broadcast[adapter.down_weight],
                       broadcast[adapter.down_bias], 1e-6)
        live = inputs[k][:-1].double()  # the last token only labels: no gradient reaches its input
        projected = live @ bins.direction
        for j in range(bins.count):
            members = ((projected > bins.low[j]) & (projected <= bins.high[j])).nonzero().reshape(-1)
            if members.numel() == 1:
                estimate = bins.d_weight[j] / bins.d_bias[j]
                truth = live[members[0]]
                assert float((estimate - truth).norm() / truth.norm()) < 1e-4
                alone += 1
    assert alone >= 6
    with torch.no_grad():
        found = attack.recover(method.model, adapters, broadcast, grads, ARCH.positions)
    assert {(f.position, f.token) for f in found} == {(t, tok) for t, tok in enumerate(sequence[0][:-1])}


def test_the_tampered_broadcast_changes_only_trainable_parameters():
    method = adapter_method(16)
    frozen = {n: p.detach().clone() for n, p in method.model.named_parameters() if not p.requires_grad}
    state = method.get_flat()
    public = random_sequences(8, 8, ARCH.vocab, torch.Generator().manual_seed(1))
    attack = TrapInversion(TrapInversion.Config())
    tampered = attack.tamper_broadcast(0, state, ServerHold(method=method, public=public, collate=collate),
                                       torch.Generator().manual_seed(0))
    assert not torch.equal(tampered, state) and torch.equal(method.get_flat(), state)  # the model is left as it was
    method.set_flat(tampered)
    after = dict(method.model.named_parameters())
    assert all(torch.equal(after[n], value) for n, value in frozen.items())
    named = method.unflatten(tampered)
    assert all(float(named[f"transformer.h.{i}.ln_1.weight"].abs().max()) == 0 for i in range(ARCH.layers))
    rows = named["transformer.h.0.adapter_mlp.down.weight"]
    assert torch.allclose(rows, rows[0].expand_as(rows))  # one direction, thresholds in the biases
    assert bool((named["transformer.h.0.adapter_mlp.down.bias"].diff() != 0).all())
    # a round that is not attacked is broadcast as trained
    later = TrapInversion(TrapInversion.Config(rounds=(0,))).tamper_broadcast(
        1, state, ServerHold(method=method, public=public, collate=collate), torch.Generator())
    assert torch.equal(later, state)


def test_it_refuses_a_method_without_adapters():
    lora = build_method(ARCH, lora_rank=4)
    public = random_sequences(4, 8, ARCH.vocab, torch.Generator().manual_seed(1))
    with pytest.raises(IncompatibleError, match="bottleneck adapters"):
        TrapInversion(TrapInversion.Config()).tamper_broadcast(0, lora.get_flat(), ServerHold(lora, public, collate),
                                                               torch.Generator())


def test_it_declares_that_it_changes_training_and_refuses_several_local_steps():
    assert TrapInversion.changes_training and TrapInversion.tampers_broadcast
    attack = TrapInversion(TrapInversion.Config())
    assert attack.check_federation(SimpleNamespace(protocol="fedavg", local_steps=5)) is not None
    assert attack.check_federation(SimpleNamespace(protocol="fedsgd", local_steps=5)) is None


def test_public_inputs_are_the_distinct_token_position_pairs():
    ids, positions = public_inputs([[5, 6, 7], [5, 9]], collate)
    assert sorted(zip(positions.tolist(), ids.tolist())) == [(0, 5), (1, 6), (1, 9), (2, 7)]


@pytest.mark.slow
def test_it_beats_the_floor_on_the_inversion_grids_adapter_cell():
    # table4-inversion.yaml's adapter cell (size 16, batch 2, 24 tokens) under the malicious server:
    # ROUGE-1 0.73 against a floor of 0.54 at seed 0 (results/studies/adapter-trap/curves.csv)
    from pathlib import Path

    from bench.engine.runner import execute
    from bench.spec.scenario import load

    scenario = next(s for s in load(Path(__file__).parent.parent / "scenarios" / "studies" / "adapter-trap.yaml")
                    if "size=16" in s.name and "batch_size=2" in s.name)
    rows = {r.metric: r for r in execute(scenario, 0) if r.attack == "inversion-trap"}
    rouge = rows["inversion.rouge1"]
    assert rouge.value > rouge.extra["floor"] + 0.1


def test_its_cells_are_its_own_and_an_honest_attack_cannot_claim_them():
    # Table 4 pairs runs by (method, defense, role): a malicious server's runs must never pair with the
    # honest server's, so the trap plays its own role, and only a broadcast-tampering inversion may play it.
    from bench.api.attack import Attack
    from bench.api.registry import ATTACKS
    from bench.api.vocabulary import AttackFamily, AttackRole

    assert ATTACKS.get("inversion-trap").table_role() == AttackRole.MALICIOUS_INVERSION
    assert ATTACKS.get("inversion-dager").table_role() == AttackRole.INVERSION

    class HonestClaimingMalice(Attack):
        family = AttackFamily.INVERSION
        role = AttackRole.MALICIOUS_INVERSION

        def run(self, view, rng):
            raise AssertionError("never built")

    with pytest.raises(TypeError, match="tamper"):
        HonestClaimingMalice(HonestClaimingMalice.Config())
