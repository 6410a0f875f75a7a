"""Oracle and contract tests of CKKS homomorphic aggregation (defenses/he.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.api.config import bind
from bench.api.defense import DefenseSlot
from bench.api.errors import UserError
from bench.api.registry import DEFENSES
from defenses.he import Ciphertexts, Client, HETransport, HomomorphicEncryption, encrypt, load, seal_context, seed_words
from defenses.secagg import IndividualUpdatesHiddenError

ts = pytest.importorskip("tenseal")

LENGTH = 5000  # two chunks of 4096 slots at N = 8192, the second one partial


@pytest.fixture(scope="module")
def round_trip():
    """One round with three clients of unequal weight, shared by the tests (key generation is slow-ish)."""
    rng = torch.Generator().manual_seed(0)
    updates = {c: torch.randn(LENGTH, generator=rng) * 0.02 for c in range(3)}
    weights = {0: 10.0, 1: 30.0, 2: 60.0}
    defense = HomomorphicEncryption(HomomorphicEncryption.Config())
    carrier = defense.transport()
    messages = carrier.encode(0, updates, weights, rng)
    mean = carrier.aggregate(0, messages, weights)
    return defense, carrier, updates, weights, messages, mean


def test_decrypted_sum_matches_the_plain_weighted_mean(round_trip):
    _, _, updates, weights, _, mean = round_trip
    expected = sum(updates[c] * (weights[c] / 100.0) for c in updates)
    relative = (mean - expected).abs().max() / expected.abs().max()
    assert mean.dtype == torch.float32 and mean.shape == (LENGTH,)
    assert relative < 1e-4


def test_the_server_sees_ciphertext_bytes_it_cannot_decrypt(round_trip):
    _, carrier, updates, weights, messages, mean = round_trip
    message = messages[0]
    assert isinstance(message, Ciphertexts) and len(message.chunks) == 2
    assert all(isinstance(chunk, bytes) for chunk in message.chunks)
    assert carrier.message_bytes(message) == sum(len(chunk) for chunk in message.chunks)
    # Only the key holder has a secret key; a secret key of the same parameters that is not the key
    # holder's decrypts the ciphertext to noise, not to the client's weighted update.
    seal = ts.sealapi
    context = seal_context(carrier.config, seed_words("another key"))
    wrong = seal.Decryptor(context, seal.KeyGenerator(context).secret_key())
    plain = seal.Plaintext()
    wrong.decrypt(load(seal.Ciphertext, context, message.chunks[0]), plain)
    decoded = torch.tensor(seal.CKKSEncoder(context).decode_double(plain)[:100])
    share = updates[0][:100].double() * weights[0] / sum(weights.values())
    assert (decoded - share).abs().max() > 1e3 * share.abs().max()
    assert not any(hasattr(carrier, name) for name in ("_secret_key", "secret_key"))
    with pytest.raises(IndividualUpdatesHiddenError):
        carrier.decode_individual(messages)
    assert "secret key hidden" in repr(carrier._key_holder)


def test_encryption_noise_comes_from_the_run_and_differs_per_ciphertext():
    """Same generator -> byte-identical ciphertexts and decrypted mean (reruns repeat); another round
    or another chunk gets other noise (one seed reused would let the server subtract ciphertexts)."""
    updates = {c: torch.full((LENGTH,), 0.01 * (c + 1)) for c in range(2)}
    weights = {0: 1.0, 1: 1.0}

    def one_round(round_index: int):
        carrier = HomomorphicEncryption(HomomorphicEncryption.Config()).transport()
        messages = carrier.encode(round_index, updates, weights, torch.Generator().manual_seed(7))
        return messages, carrier.aggregate(round_index, messages, weights), carrier.summary()["precision_loss"]

    (first, mean_a, loss_a), (second, mean_b, loss_b) = one_round(0), one_round(0)
    assert first[0].chunks == second[0].chunks and torch.equal(mean_a, mean_b) and loss_a == loss_b > 0
    other, _, _ = one_round(1)
    assert other[0].chunks[0] != first[0].chunks[0]
    assert first[0].chunks[0] != first[1].chunks[0]
    # two chunks holding the same values: equal ciphertexts would mean the noise was reused
    client = Client(HomomorphicEncryption.Config(), first_carrier_key(), seed_words("client"))
    twice = np.full(2 * client.config.slots, 0.25)
    message = encrypt(client, twice, seed=3)
    assert message.chunks[0] != message.chunks[1]
    assert message.chunks == encrypt(client, twice, seed=3).chunks


def first_carrier_key() -> bytes:
    carrier = HomomorphicEncryption(HomomorphicEncryption.Config()).transport()
    carrier._ensure_keys(0)
    return carrier._key_holder.public_key


def test_costs_report_time_bytes_and_expansion(round_trip):
    defense, *_ = round_trip
    costs = defense.costs()
    for key in ("client_s", "server_s", "keyholder_s", "bytes_up", "bytes_down"):
        key = f"cost.he.{key}"
        assert costs[key] > 0, key
    assert costs["cost.he.expansion"] > 10  # a CKKS ciphertext is far larger than the floats it packs
    assert costs["cost.he.precision_loss"] < 1e-6


def test_weights_renormalise_over_the_clients_whose_message_arrived(round_trip):
    _, carrier, updates, weights, _, _ = round_trip
    messages = carrier.encode(1, updates, weights, torch.Generator())
    del messages[2]
    mean = carrier.aggregate(1, messages, weights)
    expected = (updates[0] * 10 + updates[1] * 30) / 40
    assert (mean - expected).abs().max() / expected.abs().max() < 1e-4


def test_defense_contract():
    cls = DEFENSES.get("he")
    assert cls is HomomorphicEncryption and cls.slot is DefenseSlot.TRANSPORT
    assert isinstance(cls(cls.Config()).transport(), HETransport)


def test_config_rejects_insecure_or_unknown_parameters():
    with pytest.raises(UserError, match="128-bit"):
        bind(HomomorphicEncryption.Config, {"poly_modulus_degree": 4096}, file="s.yaml", key="defenses.he")
    with pytest.raises(UserError, match="poly_modulus_degree"):
        bind(HomomorphicEncryption.Config, {"poly_modulus_degree": 5000}, file="s.yaml", key="defenses.he")
    config = bind(
        HomomorphicEncryption.Config,
        {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [40, 20, 40], "scale_bits": 21},
        file="s.yaml",
        key="defenses.he",
    )
    assert config.coeff_mod_bit_sizes == (40, 20, 40) and config.slots == 2048
