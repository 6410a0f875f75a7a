"""Oracle and contract tests of secure aggregation (defenses/secagg.py, defenses/masking/)."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch
from scipy import stats

from bench.api.config import bind
from bench.api.defense import DefenseSlot
from bench.api.errors import UserError
from bench.api.registry import DEFENSES
from defenses.masking import shamir
from defenses.masking.fixedpoint import FixedPoint
from defenses.masking.graph import default_degree, harary_graph
from defenses.masking.material import Entropy, Secret
from defenses.masking.prg import expand
from defenses.masking.protocol import SecAggRound
from defenses.secagg import IndividualUpdatesHiddenError, SecAggAbortError, SecAggTransport, SecureAggregation

LENGTH = 4000


def make_updates(num_clients: int, length: int = LENGTH, seed: int = 0, scale: float = 0.05) -> dict[int, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    return {c: torch.randn(length, generator=rng) * scale for c in range(num_clients)}


def start_round(num_clients: int, degree: int | None = None, seed: int = 0, threshold: float = 0.5) -> SecAggRound:
    rng = torch.Generator().manual_seed(seed)
    fixed = FixedPoint(32, 1.0, num_clients)
    return SecAggRound(0, list(range(num_clients)), fixed, threshold, degree, Entropy.from_generator(rng), rng)


def weighted_inputs(updates: dict[int, torch.Tensor], senders) -> dict[int, tuple[np.ndarray, float]]:
    return {c: (updates[c].numpy(), 1.0 / len(updates)) for c in senders}


def plain_weighted_sum(updates, senders) -> np.ndarray:
    return sum(updates[c].numpy().astype(np.float64) / len(updates) for c in senders)


def transport(**overrides) -> SecAggTransport:
    return SecureAggregation(SecureAggregation.Config(**overrides)).transport()


# --- building blocks -------------------------------------------------------------------------------


def test_chacha20_prg_matches_rfc8439_known_answer():
    # RFC 8439 appendix A.1, test vector 1: all-zero key and nonce, block counter 0.
    words = expand(bytes(32), 4, bits=32)
    assert [int(w) for w in words] == [0xADE0B876, 0x903DF1A0, 0xE56A5D40, 0x28BD8653]
    assert expand(bytes(32), 3, bits=40).dtype == np.uint64


def test_shamir_any_threshold_subset_reconstructs_and_fewer_fail():
    draw = Entropy(bytes(range(32))).draw
    secret = bytes(range(100, 132))
    shares = shamir.split(secret, threshold=3, holders=range(5), draw=draw)
    assert shamir.reconstruct([shares[0], shares[2], shares[4]], 3) == secret
    assert shamir.reconstruct([shares[4], shares[3], shares[1]], 3) == secret
    assert shamir.reconstruct([shamir.Share.from_bytes(s.to_bytes()) for s in shares.values()], 3) == secret
    with pytest.raises(ValueError, match="3 needed"):
        shamir.reconstruct([shares[0], shares[1]], 3)
    # Shamir alone has no integrity: a forged share yields a wrong secret (the server therefore checks a
    # reconstructed mask key against the public key the client advertised).
    forged = shamir.Share(shares[2].x, (shares[2].y + 1) % shamir.PRIME)
    assert shamir.reconstruct([shares[0], shares[1], forged], 3) != secret


def test_fixed_point_sum_of_extremes_does_not_overflow():
    n = 9  # 32767 / 9 rounds up: a scale without the n-client margin would wrap this sum
    fixed = FixedPoint(bits=16, clip=2.0, num_clients=n)
    for sign in (1.0, -1.0):
        total = sum(fixed.encode(np.full(3, sign * 5.0), 1.0 / n) for _ in range(n))  # clipped to +-2
        assert np.allclose(fixed.decode(total), sign * 2.0, atol=fixed.error_bound(n))
    with pytest.raises(ValueError, match="cannot hold"):
        FixedPoint(bits=8, clip=1.0, num_clients=200)


def test_harary_graph_is_regular_and_default_degree_is_logarithmic():
    graph = harary_graph(list(range(20)), degree=4, rng=torch.Generator().manual_seed(3))
    assert all(len(vs) == 4 for vs in graph.values())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    assert default_degree(10) == 8 and default_degree(1000) == 20 and default_degree(3) == 2


# --- oracles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [None, 4])
def test_unmasked_sum_equals_plain_sum_within_quantisation_bound(degree):
    updates = make_updates(10)
    protocol = start_round(10, degree)
    masked = protocol.masked_inputs(weighted_inputs(updates, range(10)))
    total = protocol.unmask(masked, set(masked))
    error = np.abs(total - plain_weighted_sum(updates, range(10))).max()
    assert error <= protocol.fixed_point.error_bound(10)
    # The masks are not a no-op: a single masked input is far from its encoded update.
    encoded = protocol.fixed_point.encode(updates[0].numpy(), 0.1)
    assert np.mean(masked[0] == encoded) < 0.01


def test_up_to_n_minus_t_dropouts_still_recover_the_survivors_sum():
    updates = make_updates(10)
    protocol = start_round(10)
    assert protocol.threshold == 6  # floor(0.5 * 10) + 1
    early, late = {1, 4, 7}, {8}  # 4 = n - t clients do not answer the unmasking request
    masked = protocol.masked_inputs(weighted_inputs(updates, set(range(10)) - early))
    total = protocol.unmask(masked, set(masked) - late)
    expected = plain_weighted_sum(updates, set(range(10)) - early)  # late dropouts' inputs still count
    assert np.abs(total - expected).max() <= protocol.fixed_point.error_bound(10)


def test_more_than_n_minus_t_dropouts_abort_with_a_clear_error():
    updates = make_updates(10)
    protocol = start_round(10)
    masked = protocol.masked_inputs(weighted_inputs(updates, range(5)))  # 5 > n - t = 4 dropped
    with pytest.raises(SecAggAbortError, match="threshold 6"):
        protocol.unmask(masked, set(masked))


def test_unmasking_reveals_one_kind_of_share_per_client():
    updates = make_updates(6)
    protocol = start_round(6)
    masked = protocol.masked_inputs(weighted_inputs(updates, [0, 1, 2, 3, 4]))
    response = protocol.clients[0].unmask(frozenset(masked))
    kinds = {owner: kind for owner, (kind, _) in response.items()}
    assert kinds == {0: "seed", 1: "seed", 2: "seed", 3: "seed", 4: "seed", 5: "mask-key"}


def test_masked_update_is_uniform_and_the_unmasked_one_is_not():
    updates = make_updates(5, length=20000)
    protocol = start_round(5)
    masked = protocol.masked_inputs(weighted_inputs(updates, range(5)))[2]
    encoded = protocol.fixed_point.encode(updates[2].numpy(), 0.2)

    def uniformity_p_values(words: np.ndarray) -> tuple[float, float]:
        ks = stats.kstest(words.astype(np.float64) / 2**32, "uniform").pvalue
        chi2 = stats.chisquare(np.bincount(words >> 24, minlength=256)).pvalue  # top byte, 256 bins
        return ks, chi2

    assert min(uniformity_p_values(masked)) > 0.01
    assert max(uniformity_p_values(encoded)) < 1e-6


def test_secagg_plus_gives_the_same_sum_with_fewer_key_agreements():
    updates = make_updates(16)
    full, sparse = start_round(16), start_round(16, degree=4)
    sums = []
    for protocol in (full, sparse):
        masked = protocol.masked_inputs(weighted_inputs(updates, set(range(16)) - {5}))
        sums.append(protocol.unmask(masked, set(masked)))
    assert np.abs(sums[0] - sums[1]).max() <= 2 * full.fixed_point.error_bound(16)
    assert sparse.threshold == 3 and full.threshold == 9
    assert max(sparse.costs.bytes_down.values()) < min(full.costs.bytes_down.values()) / 2


# --- the transport and the defense -----------------------------------------------------------------


def test_transport_returns_weighted_mean_renormalised_over_survivors():
    updates = make_updates(10, seed=1)
    weights = {c: float(c + 1) for c in updates}
    carrier = transport(dropout_rate=0.2, late_dropout_rate=0.1)
    messages = carrier.encode(0, updates, weights, torch.Generator().manual_seed(8))
    assert len(messages) == 8  # this seed drops two clients before their input arrives, one after
    assert all(m.dtype == torch.int64 and int(m.min()) >= 0 and int(m.max()) < 2**32 for m in messages.values())
    mean = carrier.aggregate(0, messages, weights)
    arrived = sum(weights[c] for c in messages)
    expected = sum(updates[c] * (weights[c] / arrived) for c in messages)
    assert mean.dtype == torch.float32 and torch.allclose(mean, expected, atol=1e-7)


@pytest.mark.parametrize("bits", [12, 48])
def test_ring_size_sets_the_precision_of_the_mean(bits):
    updates, weights = make_updates(4), {c: 1.0 for c in range(4)}
    carrier = transport(bits=bits, clip=0.25)
    mean = carrier.aggregate(0, carrier.encode(0, updates, weights, torch.Generator().manual_seed(1)), weights)
    expected = sum(u.clamp(-0.25, 0.25) for u in updates.values()) / 4
    bound = FixedPoint(bits, 0.25, 4).error_bound(4)
    assert (mean - expected).abs().max() <= bound + 1e-7  # + float32 rounding of the result
    assert (bits == 12) == (bound > 1e-5)  # 12 bits is coarse: the bound is real, not vacuous


def test_transport_abort_raises_or_skips_as_configured():
    updates, weights = make_updates(6), {c: 1.0 for c in range(6)}
    rng = torch.Generator().manual_seed(0)
    carrier = transport(dropout_rate=1.0)
    with pytest.raises(SecAggAbortError):
        carrier.aggregate(0, carrier.encode(0, updates, weights, rng), weights)
    skipping = transport(late_dropout_rate=1.0, skip_aborted_rounds=True)
    zero = skipping.aggregate(3, skipping.encode(3, updates, weights, rng), weights)
    assert torch.count_nonzero(zero) == 0 and zero.numel() == LENGTH
    assert skipping.ledger.summary()["aborted_rounds"] == 1.0


def test_same_seed_same_transcript_and_os_keys_same_mean():
    updates, weights = make_updates(4), {c: 1.0 for c in range(4)}
    first = transport().encode(0, updates, weights, torch.Generator().manual_seed(9))
    second = transport().encode(0, updates, weights, torch.Generator().manual_seed(9))
    assert all(torch.equal(first[c], second[c]) for c in first)
    fresh = transport(key_source="os")
    messages = fresh.encode(0, updates, weights, torch.Generator().manual_seed(9))
    assert not torch.equal(messages[0], first[0])
    assert torch.allclose(fresh.aggregate(0, messages, weights), sum(updates.values()) / 4, atol=1e-7)


def test_decode_individual_raises_and_message_bytes_are_packed():
    carrier = transport(bits=20)
    messages = carrier.encode(0, make_updates(3), {0: 1.0, 1: 1.0, 2: 1.0}, torch.Generator().manual_seed(0))
    with pytest.raises(IndividualUpdatesHiddenError):
        carrier.decode_individual(messages)
    assert carrier.message_bytes(messages[0]) == LENGTH * 20 // 8


def test_defense_contract_and_costs():
    cls = DEFENSES.get("secagg")
    assert cls is SecureAggregation and cls.slot is DefenseSlot.TRANSPORT
    defense = cls(bind(cls.Config, {"variant": "secagg+", "neighbours": 2}, file="s.yaml", key="defenses.secagg"))
    carrier = defense.transport()
    updates, weights = make_updates(8), {c: 1.0 for c in range(8)}
    for round_index in range(2):
        carrier.aggregate(round_index, carrier.encode(round_index, updates, weights, torch.Generator()), weights)
    costs = defense.costs()
    for key in ("client_s", "server_s", "bytes_up", "bytes_down", "expansion"):
        key = f"cost.secagg.{key}"
        assert costs[key] > 0, key
    assert 1.0 < costs["cost.secagg.expansion"] < 1.2  # 32-bit words plus keys, shares and unmasking replies
    assert costs["cost.secagg.precision_loss"] <= FixedPoint(32, 1.0, 8).error_bound(8)


def test_config_errors_name_the_key():
    with pytest.raises(UserError, match="threshold"):
        bind(SecureAggregation.Config, {"threshold": 1.5}, file="s.yaml", key="defenses.secagg")
    with pytest.raises(UserError, match="variant"):
        bind(SecureAggregation.Config, {"variant": "secagg++"}, file="s.yaml", key="defenses.secagg")


def test_no_key_or_seed_appears_in_repr_logs_or_results(caplog):
    caplog.set_level(logging.DEBUG)
    defense = SecureAggregation(SecureAggregation.Config(dropout_rate=0.3))
    carrier = defense.transport()
    updates, weights = make_updates(6, length=64), {c: 1.0 for c in range(6)}
    messages = carrier.encode(0, updates, weights, torch.Generator().manual_seed(2))
    protocol = carrier._pending[0].protocol
    secrets = [
        value
        for c in protocol.clients.values()
        for value in (c._mask_key.private_bytes_raw(), c._channel_key.private_bytes_raw(), c._self_seed.reveal())
    ]
    shares = [share for client in protocol.clients.values() for pair in client._held.values() for share in pair]
    exposed = [repr(defense), str(defense), repr(carrier), repr(carrier._pending[0]), repr(protocol)]
    exposed.append(repr(protocol.server))
    exposed += [repr(c) for c in protocol.clients.values()] + [repr(s) for s in shares] + [repr(Secret(secrets[0]))]
    carrier.aggregate(0, messages, weights)
    exposed += [repr(defense.costs()), caplog.text]
    text = "\n".join(exposed)
    assert "secagg round 0" in caplog.text  # the log ran, so the check below means something
    for secret in secrets:
        for form in (secret.hex(), repr(secret), str(int.from_bytes(secret, "big")), secret.hex()[:16]):
            assert form not in text
    assert all(str(share.y) not in text for share in shares)
    with pytest.raises(TypeError):
        pickle.dumps(Secret(b"k" * 32))
