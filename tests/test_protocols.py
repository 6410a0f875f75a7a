"""Round protocols through the one round loop: KD (logits on a proxy set) and split learning (activations).

Oracles: distilling a model toward its own shared distribution is a zero-gradient step (KD with one
client whose local training does nothing and whose proxy set is its own data leaves the global model
where it was); split learning cut at 0 blocks (and at any depth) computes the same update as ordinary
FedAvg training, since only where the backward pass is split differs.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from bench.api.registry import PROTOCOLS
from bench.api.transcript import GroundTruth, Transcript
from bench.engine import federation as fl
from bench.engine.protocols.kd import distil, shared_logits
from bench.spec.scenario import Federation as FederationSettings
from bench.testing.inversion import TinyArch, build_method, collate, random_sequences
from bench.world.partition import ClientData

ARCH = TinyArch(family="gpt2", vocab=64, hidden=32, layers=2, heads=2, positions=16)
LLAMA = TinyArch(family="llama", vocab=64, hidden=32, layers=2, heads=2, positions=16)


def _settings(protocol: str, **overrides):
    base = dict(rounds=1, clients=1, clients_per_round=1, protocol=protocol, local_steps=2, batch_size=4, lr=0.05,
                optimizer="sgd", server_lr=1.0, cut_layer=0, proxy_examples=8, kd_temperature=2.0, kd_top_k=0,
                distill_steps=3)
    return FederationSettings(**{**base, **overrides})  # the schema's own settings: every field the engine reads


def _data(clients: int, count: int = 8, seed: int = 1) -> dict[int, list[list[int]]]:
    rng = torch.Generator().manual_seed(seed)
    return {c: random_sequences(count, 10, ARCH.vocab, rng) for c in range(clients)}


def _federation(method, data, settings, public=None, keep=frozenset({"client_updates", "client_batches"})):
    return fl.Federation(method=method, model=method.model, collate=collate, settings=settings, seed_parts=(0,),
                         clients=[ClientData(members=data[c], nonmembers=[]) for c in sorted(data)],
                         public=list(public if public is not None else data[0]), keep=keep)


def test_distilling_a_model_toward_its_own_shared_distribution_leaves_it_unchanged():
    method = build_method(ARCH)
    batch = collate(_data(1)[0])
    own = F.softmax(shared_logits(method.model, batch, temperature=2.0, top_k=0), dim=-1)
    before = method.get_flat()
    distil(method, batch, own, steps=3, lr=1.0, optimizer="sgd", temperature=2.0)
    # zero gradient up to float rounding (softmax vs exp(log_softmax) differ in the last bits: ~1e-9 steps)
    assert (method.get_flat() - before).abs().max() < 1e-7
    # and a teacher that differs does move it (the oracle above is not vacuous)
    distil(method, batch, own.roll(1, dims=-1), steps=1, lr=1.0, optimizer="sgd", temperature=2.0)
    assert (method.get_flat() - before).abs().max() > 1e-3


def test_kd_with_one_client_that_does_not_train_and_its_data_as_proxy_is_self_distillation():
    """One client, proxy set = its records, local training a no-op: the consensus is the global model's
    own distribution on the proxy, so the server's distillation leaves the global state unchanged."""
    method, data = build_method(ARCH), _data(1)
    fed = _federation(method, data, _settings("kd", proxy_examples=len(data[0])))
    fed.trainer = lambda job: {"loss": 0.0}
    before = method.get_flat()
    stats = fl.run(fed, Transcript(), GroundTruth())
    assert (method.get_flat() - before).abs().max() < 1e-7
    rows = sum(len(seq) - 1 for seq in data[0])  # one row per scored next-token position
    assert stats.bytes_up == rows * ARCH.vocab * 4
    assert stats.plain_bytes_up == method.num_trainable * 4


def test_kd_distils_the_global_model_toward_the_clients_logits():
    method, data = build_method(ARCH), _data(2)
    fed = _federation(method, data, _settings("kd", clients=2, clients_per_round=2, distill_steps=10, lr=0.5,
                                              proxy_examples=8))
    start = method.get_flat()
    transcript = Transcript()
    fl.run(fed, transcript, GroundTruth())
    final, batch = method.get_flat(), collate(fed.protocol.proxy)
    sent = transcript.rounds[0].transmitted
    assert sorted(sent) == [0, 1]
    consensus = sum(F.softmax(m, dim=-1) for m in sent.values()) / 2

    def gap(state):
        method.set_flat(state)
        log_q = F.log_softmax(shared_logits(method.model, batch, 2.0, 0), dim=-1)
        return float(F.kl_div(log_q, consensus, reduction="batchmean"))

    assert gap(fed.protocol.local[0]) != gap(start)  # the clients trained
    assert gap(final) < gap(start)
    assert torch.allclose(fed.protocol.consensus, consensus)


def test_kd_top_k_sends_k_values_and_indices_per_row():
    method, data = build_method(ARCH), _data(1)
    fed = _federation(method, data, _settings("kd", kd_top_k=5))
    transcript = Transcript()
    stats = fl.run(fed, transcript, GroundTruth())
    message = transcript.rounds[0].transmitted[0]
    assert (torch.isfinite(message).sum(-1) == 5).all()
    assert stats.bytes_up == message.shape[0] * 5 * 8


@pytest.mark.parametrize("cut", [0, 1])
def test_split_learning_computes_the_fedavg_update(cut):
    """The cut changes where the backward pass is split, not what it computes: a split round's update
    equals the FedAvg round's (same seed, same batches) within float tolerance."""
    data = _data(2)
    results = {}
    for protocol in ("fedavg", "split"):
        method = build_method(ARCH)
        fed = _federation(method, data, _settings(protocol, clients=2, clients_per_round=2, cut_layer=cut),
                          keep=frozenset({"client_updates", "client_batches", "aggregates"}))
        start = method.get_flat()
        transcript, truth = Transcript(), GroundTruth()
        fl.run(fed, transcript, truth)
        results[protocol] = (method.get_flat() - start, transcript, truth)
    assert torch.allclose(results["split"][0], results["fedavg"][0], rtol=1e-5, atol=1e-7)
    assert results["split"][0].abs().max() > 0
    assert results["split"][2].client_batches == results["fedavg"][2].client_batches
    sent = results["split"][1].rounds[0].transmitted[0]
    assert len(sent["activations"]) == 2 and sent["activations"][0].shape[-1] == ARCH.hidden


def test_split_at_cut_0_sends_the_input_embeddings():
    method, data = build_method(ARCH), _data(1)
    fed = _federation(method, data, _settings("split", local_steps=1, batch_size=8, cut_layer=0))
    transcript, truth = Transcript(), GroundTruth()
    start = method.get_flat()
    fl.run(fed, transcript, truth)
    method.set_flat(start)
    sent = transcript.rounds[0].transmitted[0]["activations"][0]
    (sequences,) = [truth.client_batches[(0, 0)]]
    ids = collate(sequences)["input_ids"]
    transformer = method.model.transformer
    expected = transformer.wte(ids) + transformer.wpe(torch.arange(ids.shape[1]))
    assert torch.allclose(sent, expected.detach(), atol=1e-6)


def test_protocols_are_registered_and_parameter_sharing_keeps_the_engine_path():
    assert {"fedavg", "fedsgd", "kd", "split"} <= set(PROTOCOLS.names())
    assert PROTOCOLS.get("fedavg").shares_parameters and PROTOCOLS.get("fedsgd").one_step
    assert not PROTOCOLS.get("kd").shares_parameters and not PROTOCOLS.get("split").shares_parameters


def test_split_inversion_recovers_every_input_exactly_at_cut_0():
    """At cut 0 the activation is token + position embedding: nearest-token matching over the whole
    vocabulary is exact (one local step: the client layers the server holds are the ones that ran)."""
    from attacks.inversion.split_activations import SplitActivationInversion
    from bench.scoring.inversion import score_reconstruction

    method, data = build_method(ARCH), _data(2)
    fed = _federation(method, data, _settings("split", clients=2, clients_per_round=2, local_steps=1, batch_size=8,
                                                          cut_layer=0))
    transcript, truth = Transcript(), GroundTruth()
    fl.run(fed, transcript, truth)
    view = SimpleNamespace(rounds=transcript.rounds, tokenizer=None)
    attack = SplitActivationInversion(SplitActivationInversion.Config(shortlist=ARCH.vocab))
    prediction = attack.run(view, torch.Generator())
    metrics = {m.name: m.value for m in score_reconstruction(prediction, truth)}
    assert metrics["inversion.exact"] == 1.0


def _kd_view(method, transcript, candidates):
    from bench.testing.inversion import lm_example_losses
    from bench.world.tiers import OpenModel

    task = SimpleNamespace(kind="language", collate=lambda examples, tokenizer, device: collate(examples),
                           example_losses=lm_example_losses)
    layout = method.layout()
    return SimpleNamespace(rounds=transcript.rounds, candidates=candidates, tokenizer=None,
                           final_model=OpenModel(method.model, layout, task, None))


def test_shared_logits_on_a_clients_own_records_reveal_its_members():
    """One client whose records are the proxy set overfits them: a copy distilled from its shared logits
    ranks its members above held-out records (AUC well above 0.5), and DP on the logits with heavy
    noise takes that away."""
    from attacks.mia.kd_logits import SharedLogitsMIA
    from bench.scoring.mia import auc as roc_auc
    from defenses.dp.logits import DPLogits

    data, held_out = _data(1, count=8, seed=1), _data(1, count=8, seed=2)[0]
    candidates, flags = data[0] + held_out, torch.tensor([1] * 8 + [0] * 8)
    aucs = {}
    for noise in (None, 50.0):
        method = build_method(ARCH)
        fed = _federation(method, data, _settings("kd", local_steps=30, batch_size=8, lr=0.5, proxy_examples=8),
                          keep=frozenset({"client_updates", "global_states"}))
        if noise is not None:
            fed.defenses = [DPLogits(DPLogits.Config(clip_norm=5.0, noise_multiplier=noise))]
        transcript = Transcript()
        fl.run(fed, transcript, GroundTruth())
        attack = SharedLogitsMIA(SharedLogitsMIA.Config(steps=30, lr=3e-3))
        scores = attack.run(_kd_view(method, transcript, candidates), torch.Generator()).scores
        aucs[noise] = roc_auc(scores, flags)
    assert aucs[None] > 0.8
    assert aucs[50.0] < aucs[None] - 0.2


def test_dp_logits_clips_rows_and_accounts_each_release():
    from defenses.dp.logits import DPLogits, clip_rows

    rows = torch.tensor([[3.0, 4.0, 0.0], [0.3, 0.4, 0.0], [6.0, -torch.inf, 8.0]])
    clipped = clip_rows(rows, 1.0)
    assert torch.allclose(clipped[0], torch.tensor([0.6, 0.8, 0.0]))  # norm 5 -> 1
    assert torch.equal(clipped[1], rows[1])  # already inside the ball
    assert torch.isinf(clipped[2, 1]) and torch.allclose(clipped[2, [0, 2]].norm(), torch.tensor(1.0))
    epsilons = []
    for releases in (1, 4):
        defense = DPLogits(DPLogits.Config(clip_norm=1.0, noise_multiplier=2.0))
        for r in range(releases):
            defense.on_channel(r, 0, torch.zeros(4, 3), torch.Generator().manual_seed(r))
        epsilons.append(defense.privacy()["dp.epsilon"])
    assert 0 < epsilons[0] < epsilons[1] < float("inf")


def test_attacks_and_defenses_are_refused_under_a_protocol_whose_channel_they_do_not_read():
    from bench.api.registry import ATTACKS, DEFENSES
    from bench.engine.runner import channel_refusal

    def scenario(protocol):
        return SimpleNamespace(federation=SimpleNamespace(protocol=protocol))

    tokens = ATTACKS.get("inversion-tokens")(ATTACKS.get("inversion-tokens").Config())
    split_attack = ATTACKS.get("inversion-split")(ATTACKS.get("inversion-split").Config())
    loss = ATTACKS.get("mia-loss")(ATTACKS.get("mia-loss").Config())
    dp_logits = DEFENSES.get("dp-logits")(DEFENSES.get("dp-logits").Config())
    assert channel_refusal(tokens, scenario("kd")) and channel_refusal(tokens, scenario("split"))
    assert channel_refusal(tokens, scenario("fedavg")) is None
    assert channel_refusal(split_attack, scenario("fedavg")) and channel_refusal(split_attack, scenario("split")) is None
    assert channel_refusal(loss, scenario("kd")) is None  # reads the final model, not a message
    assert channel_refusal(dp_logits, scenario("fedavg")) and channel_refusal(dp_logits, scenario("kd")) is None


def _kd_round(data, proxy, secure: bool, **overrides):
    from defenses.secagg import SecAggConfig, SecureAggregation

    method = build_method(ARCH)
    settings = _settings("kd", clients=len(data), clients_per_round=len(data), proxy_examples=len(proxy), **overrides)
    fed = _federation(method, data, settings, public=proxy, keep=frozenset({"client_updates", "global_states"}))
    if secure:
        fed.defenses = [SecureAggregation(SecAggConfig())]
    transcript = Transcript()
    stats = fl.run(fed, transcript, GroundTruth())
    return method, transcript, stats


def test_secagg_on_kd_gives_the_server_the_plain_logit_sum_and_no_clients_logits():
    """Oracle: the consensus the server unmasks under secagg is the plain example-weighted mean of the
    clients' distributions, within secagg's fixed-point error (32 bits, clip 1, 3 clients: < 1e-9 per value)
    plus float32 rounding: |difference| <= 1e-6; what the server received from each client is masked."""
    data = _data(3)
    data[2] = data[2][:5]  # unequal example counts: the weights matter
    _, plain, plain_stats = _kd_round(data, data[0], secure=False, local_steps=3)
    _, masked, masked_stats = _kd_round(data, data[0], secure=True, local_steps=3)
    (before,), (after,) = plain.rounds, masked.rounds
    weights = {c: float(len(data[c])) for c in data}
    expected = sum(F.softmax(before.transmitted[c], dim=-1) * weights[c] / sum(weights.values()) for c in data)
    assert torch.allclose(before.aggregate, expected, atol=1e-7)          # the plain run keeps its consensus too
    assert (after.aggregate - before.aggregate).abs().max() <= 1e-6
    assert after.aggregate.shape == before.aggregate.shape and after.channel["secure_sum"]
    for c in data:  # the server's view of a client: masked residues, nothing like its distribution
        assert after.transmitted[c].dtype == torch.int64
        assert not torch.allclose(after.transmitted[c].float().view_as(before.transmitted[c]),
                                  F.softmax(before.transmitted[c], dim=-1), atol=0.1)
    assert masked_stats.bytes_up == plain_stats.bytes_up  # 32-bit residues per value, as float32 logits
    from bench.api.registry import DEFENSES
    from bench.engine.runner import channel_refusal

    secagg = DEFENSES.get("secagg")(DEFENSES.get("secagg").Config())
    on = {p: channel_refusal(secagg, SimpleNamespace(federation=SimpleNamespace(protocol=p))) for p in ("kd", "split")}
    assert on["kd"] is None and on["split"]  # the logit sum, yes; activations are not summed


@pytest.mark.slow  # ~25 s on the shared cores: six distillations of the attack's copies
def test_mia_on_kd_logits_under_secagg_has_only_the_aggregate():
    """Client 0 overfits the proxy set (its own records); without secagg the server distils a copy of it from
    its logits; under secagg it gets one copy from the weighted mean of three clients' distributions, and
    its scores are those of an attack handed that mean as a single client's message. Measured: AUC 1.0 both
    ways here: the proxy set is client 0's own records, so the mean of the distributions still peaks on
    them; secagg hides which client sent what, not what the consensus itself reveals."""
    from attacks.mia.kd_logits import SharedLogitsMIA
    from bench.scoring.mia import auc as roc_auc

    data, held_out = _data(3, count=8, seed=1), _data(1, count=8, seed=2)[0]
    candidates, flags = data[0] + held_out, torch.tensor([1] * 8 + [0] * 8)
    attack = SharedLogitsMIA(SharedLogitsMIA.Config(steps=30, lr=3e-3))
    aucs, scores = {}, {}
    for secure in (False, True):
        method, transcript, _ = _kd_round(data, data[0], secure, local_steps=30, batch_size=8, lr=0.5)
        scores[secure] = attack.run(_kd_view(method, transcript, candidates), torch.Generator()).scores
        aucs[secure] = roc_auc(scores[secure], flags)
        if secure:  # the same attack handed only the consensus, as if one client had sent it
            record = transcript.rounds[0]
            record.transmitted = {0: record.aggregate.log()}
            record.channel = {**record.channel, "secure_sum": False}
            alone = attack.run(_kd_view(method, transcript, candidates), torch.Generator()).scores
            assert torch.allclose(scores[True], alone, atol=1e-4)
    print(f"mia-kd-logits AUC: per-client logits {aucs[False]:.3f}, secure sum only {aucs[True]:.3f}")
    assert aucs[False] > 0.8


@pytest.mark.parametrize("cut", [1, 2])
def test_split_replay_inversion_recovers_every_step_of_every_client_exactly_below_the_cut(cut):
    """Known client-side layers, several Adam steps: decoding each step against the layers that ran it
    (the broadcast ones replayed through the client's earlier steps with the gradients the server
    returned) recovers every trained sequence exactly, at cuts 1 and 2. The oracle is not vacuous:
    against the broadcast layers alone (no replay), the steps after the first decode wrong tokens.
    Llama: its head is untied (a tied head's server-side gradient into the embedding is not replayed)."""
    from attacks.inversion.split_activations import SplitReplayInversion
    from bench.scoring.inversion import score_reconstruction

    method, data = build_method(LLAMA), _data(1, count=6)
    settings = _settings("split", local_steps=3, batch_size=3, cut_layer=cut,
                         optimizer="adam", lr=0.05)
    fed = _federation(method, data, settings)
    transcript, truth = Transcript(), GroundTruth()
    fl.run(fed, transcript, truth)
    view = SimpleNamespace(rounds=transcript.rounds, tokenizer=None, federation=settings)
    exact = {}
    for replay in (True, False):
        attack = SplitReplayInversion(SplitReplayInversion.Config(shortlist=4, replay=replay))
        prediction = attack.run(view, torch.Generator())
        exact[replay] = {m.name: m.value for m in score_reconstruction(prediction, truth)}["inversion.exact"]
    assert exact[True] == 1.0
    assert exact[False] < 1.0


@pytest.mark.parametrize("arch", [ARCH, LLAMA], ids=["gpt2", "llama"])
@pytest.mark.parametrize("cut", [1, 2])
def test_a_shared_prefix_runs_once_and_gives_the_activations_of_the_whole_rows(arch, cut):
    """``Bottom(..., shared_prefix=p)`` (the exhaustive search's pass: one prefix, every candidate after it)
    equals the plain pass over the whole rows at positions p.., and keeps the prefix's keys and values as
    one row seen by all (a broadcast view, stride 0), not a copy per candidate."""
    from transformers import DynamicCache

    from bench.engine.protocols.split import Bottom, _share_rows

    method = build_method(arch)
    bottom = Bottom(method.model.eval(), cut)
    prefix = torch.tensor([5, 9, 2, 30])
    candidates = torch.arange(arch.vocab)
    rows = torch.cat([prefix.repeat(len(candidates), 1), candidates[:, None]], dim=1)
    mask = torch.ones_like(rows)
    shared = bottom(rows, mask, shared_prefix=len(prefix))
    whole = bottom(rows, mask)[:, len(prefix):]
    assert shared.shape == whole.shape == (arch.vocab, 1, arch.hidden)
    assert torch.allclose(shared, whole, atol=1e-5)
    cache = DynamicCache()
    bottom._run(rows[:1, :len(prefix)], mask[:1, :len(prefix)], cache)
    _share_rows(cache, len(candidates))
    filled = [layer for layer in cache.layers if layer.is_initialized and layer.keys.numel()]
    assert len(filled) == cut and all(layer.keys.shape[0] == arch.vocab and layer.keys.stride(0) == 0 for layer in filled)


def test_split_learned_inversion_beats_its_floor_without_the_client_layers():
    """A server that holds only the public base model (not the client-side layers, removed from its view
    here) trains a decoder on public records' base activations at the cut and decodes the fine-tuned
    client's activations: well above what guessing held-out records scores (the scorer's floor)."""
    import copy

    from attacks.inversion.split_learned import SplitLearnedInversion
    from bench.scoring.inversion import score_reconstruction

    method, data = build_method(LLAMA), _data(1, count=8)
    base = copy.deepcopy(method.model)
    settings = _settings("split", local_steps=2, batch_size=4, cut_layer=1, optimizer="adam", lr=0.01)
    fed = _federation(method, data, settings)
    transcript, truth = Transcript(), GroundTruth()
    fl.run(fed, transcript, truth)
    truth.held_out = _data(1, count=8, seed=3)[0]
    for record in transcript.rounds:
        record.channel = {"cut_layer": record.channel["cut_layer"]}  # the layers are not this server's to read
    task = SimpleNamespace(collate=lambda examples, tokenizer, device: collate(examples))
    view = SimpleNamespace(rounds=transcript.rounds, tokenizer=None, auxiliary=_data(1, count=64, seed=4)[0],
                           base_model=SimpleNamespace(module=lambda: base, task=task))
    attack = SplitLearnedInversion(SplitLearnedInversion.Config(epochs=100))
    metrics = {m.name: m for m in score_reconstruction(attack.run(view, torch.Generator().manual_seed(0)), truth)}
    rouge = metrics["inversion.rouge1"]
    assert rouge.value > rouge.extra["floor"] + 0.3, (rouge.value, rouge.extra["floor"])


def test_split_sends_the_labels_in_the_clear_so_a_language_tasks_text_reaches_the_server():
    """SplitFed V1 keeps the head and the loss on the server, so the clients send their labels with the
    activations: under a language task those are the training tokens, and the server's transcript holds
    every trained sequence without any inversion (what ``cost.labels_in_clear`` = 1 declares)."""
    method, data = build_method(ARCH), _data(1)
    fed = _federation(method, data, _settings("split", local_steps=2, batch_size=4, cut_layer=1))
    transcript, truth = Transcript(), GroundTruth()
    fl.run(fed, transcript, truth)
    sent = transcript.rounds[0].transmitted[0]
    read = {tuple(row[row != -100].tolist()) for labels in sent["labels"] for row in labels}
    assert read == {tuple(s) for s in truth.client_batches[(0, 0)]}
    assert fed.protocol.costs()["cost.labels_in_clear"] == 1.0


@pytest.mark.parametrize("name", ["inversion-split", "inversion-split-replay", "inversion-split-learned"])
def test_split_attacks_refuse_a_run_whose_server_received_no_activations(name):
    from bench.api.errors import IncompatibleError
    from bench.api.registry import ATTACKS

    attack = ATTACKS.get(name)(ATTACKS.get(name).Config())
    view = SimpleNamespace(rounds=[SimpleNamespace(transmitted={}), SimpleNamespace(transmitted={})])
    with pytest.raises(IncompatibleError, match=f"^{name} reads cut-layer activations; this run's server saw none$"):
        attack.run(view, torch.Generator())
