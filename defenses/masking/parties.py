"""The two kinds of party in one round of secure aggregation, each holding only its own secrets.

Following Bonawitz et al. (2017), Figure 4 (honest-but-curious variant, no signatures or consistency
check), a client u holds two X25519 key pairs: (c_u^SK, c_u^PK) to encrypt the shares it sends to other
clients through the server, and (s_u^SK, s_u^PK) for pairwise masks, plus a self-mask seed b_u. It
Shamir-shares s_u^SK and b_u among its share group (itself and its neighbours) and sends

    y_u = q_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)   (mod 2^k),

with s_uv = HKDF(X25519(s_u^SK, s_v^PK)). In the unmasking round each surviving client reveals, for
every member of its share group, the share of b_u if u's input arrived and the share of s_u^SK if it
did not, never both. The server can then strip every mask from the sum, and only from the sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from defenses.masking.errors import SecAggAbortError
from defenses.masking.material import Entropy, Secret
from defenses.masking.prg import derive_seed, expand
from defenses.masking.shamir import SHARE_BYTES, Share, reconstruct, split

ShareKind = Literal["seed", "mask-key"]
Responses = dict[int, tuple[ShareKind, Share]]
"""One client's unmasking reply: share owner -> (which secret, the share)."""
RESPONSE_ENTRY_BYTES = 4 + 1 + SHARE_BYTES  # owner id, kind tag, share


@dataclass(frozen=True)
class AdvertisedKeys:
    """The two public keys a client posts in round 0 (public by design)."""

    channel_public: bytes
    mask_public: bytes
    WIRE_BYTES = 4 + 32 + 32  # client id and two raw X25519 public keys


def pair_seed(mask_key: X25519PrivateKey, peer_mask_public: bytes, round_index: int, u: int, v: int) -> bytes:
    """The pairwise mask seed s_uv; both ends (and the server, after reconstructing a key) derive it."""
    shared = mask_key.exchange(X25519PublicKey.from_public_bytes(peer_mask_public))
    low, high = min(u, v), max(u, v)
    return derive_seed(shared, b"tierbench/secagg/pair-mask|%d|%d|%d" % (round_index, low, high))


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Client:
    """One client's protocol state for one round. Its secrets stay in private attributes."""

    def __init__(self, client_id: int, round_index: int, entropy: Entropy):
        self.id = client_id
        self.round_index = round_index
        self._entropy = entropy
        self._channel_key = X25519PrivateKey.from_private_bytes(entropy.draw(32))
        self._mask_key = X25519PrivateKey.from_private_bytes(entropy.draw(32))
        self._self_seed = Secret(entropy.draw(32))
        self._neighbours: frozenset[int] = frozenset()
        self._directory: dict[int, AdvertisedKeys] = {}
        self._held: dict[int, tuple[Share, Share]] = {}  # owner -> (mask-key share, seed share)
        self._threshold = 0

    def __repr__(self) -> str:
        return f"Client(id={self.id}, round={self.round_index})"

    def advertise(self) -> AdvertisedKeys:
        return AdvertisedKeys(_raw_public(self._channel_key), _raw_public(self._mask_key))

    def share_keys(
        self, directory: dict[int, AdvertisedKeys], neighbours: frozenset[int], threshold: int
    ) -> dict[int, bytes]:
        """Round 1: Shamir-share s_u^SK and b_u over the share group; one sealed envelope per neighbour."""
        self._directory = {v: directory[v] for v in neighbours}
        self._neighbours = frozenset(neighbours)
        self._threshold = threshold
        holders = self._neighbours | {self.id}
        mask_secret = self._mask_key.private_bytes_raw()
        key_shares = split(mask_secret, threshold, holders, self._entropy.draw)
        seed_shares = split(self._self_seed.reveal(), threshold, holders, self._entropy.draw)
        self._held[self.id] = (key_shares[self.id], seed_shares[self.id])
        return {
            v: self._seal(v, key_shares[v].to_bytes() + seed_shares[v].to_bytes()) for v in sorted(self._neighbours)
        }

    def receive_shares(self, envelopes: dict[int, bytes]) -> None:
        """Round 1, receiving side: open each neighbour's envelope and keep the two shares."""
        for sender, envelope in envelopes.items():
            payload = self._open(sender, envelope)
            self._held[sender] = (Share.from_bytes(payload[:SHARE_BYTES]), Share.from_bytes(payload[SHARE_BYTES:]))

    def masked_input(self, encoded: np.ndarray, bits: int) -> np.ndarray:
        """Round 2: y_u, the encoded update plus the self mask and the signed pairwise masks (wrapping)."""
        masked = encoded.copy()
        masked += expand(self._self_seed.reveal(), encoded.size, bits)
        for v in sorted(self._neighbours):
            seed = pair_seed(self._mask_key, self._directory[v].mask_public, self.round_index, self.id, v)
            if self.id < v:
                masked += expand(seed, encoded.size, bits)
            else:
                masked -= expand(seed, encoded.size, bits)
        return masked

    def unmask(self, survivors: frozenset[int]) -> Responses:
        """Round 4: for each group member, its seed share if it survived, else its mask-key share."""
        group = self._neighbours | {self.id}
        alive = len(group & survivors)
        if alive < self._threshold:
            raise SecAggAbortError(
                f"secagg round {self.round_index}: client {self.id} sees {alive} surviving members of its "
                f"share group, fewer than the threshold {self._threshold}; it refuses to reveal shares"
            )
        return {
            owner: ("seed", seed_share) if owner in survivors else ("mask-key", key_share)
            for owner, (key_share, seed_share) in self._held.items()
        }

    def _channel(self, peer: int) -> ChaCha20Poly1305:
        shared = self._channel_key.exchange(X25519PublicKey.from_public_bytes(self._directory[peer].channel_public))
        low, high = min(self.id, peer), max(self.id, peer)
        label = b"tierbench/secagg/share-channel|%d|%d|%d" % (self.round_index, low, high)
        return ChaCha20Poly1305(derive_seed(shared, label))

    def _nonce(self, sender: int, recipient: int) -> bytes:
        # One key per pair and round; sender and recipient order makes the nonce unique per direction.
        return sender.to_bytes(4, "big") + recipient.to_bytes(4, "big") + self.round_index.to_bytes(4, "big")

    def _seal(self, recipient: int, payload: bytes) -> bytes:
        return self._channel(recipient).encrypt(self._nonce(self.id, recipient), payload, b"tierbench/secagg/shares")

    def _open(self, sender: int, envelope: bytes) -> bytes:
        try:
            return self._channel(sender).decrypt(self._nonce(sender, self.id), envelope, b"tierbench/secagg/shares")
        except InvalidTag:
            raise SecAggAbortError(f"secagg: client {self.id} got a forged share envelope from {sender}") from None


class Server:
    """The aggregator: routes envelopes it cannot open and unmasks the sum. It never sees a secret key
    except the mask keys of clients whose input did not arrive (reconstructed to cancel their masks)."""

    def __init__(self, round_index: int, graph: dict[int, frozenset[int]], threshold: int):
        self.round_index = round_index
        self.graph = graph
        self.threshold = threshold
        self.directory: dict[int, AdvertisedKeys] = {}

    def __repr__(self) -> str:
        return f"Server(round={self.round_index}, clients={len(self.graph)}, threshold={self.threshold})"

    @staticmethod
    def route(outgoing: dict[int, dict[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """Forward each sealed envelope from its sender to its recipient."""
        inbox: dict[int, dict[int, bytes]] = {}
        for sender, envelopes in outgoing.items():
            for recipient, envelope in envelopes.items():
                inbox.setdefault(recipient, {})[sender] = envelope
        return inbox

    def unmask(self, masked: dict[int, np.ndarray], responses: dict[int, Responses], bits: int) -> np.ndarray:
        """The sum of the survivors' encoded inputs, as wrapped words (reduce modulo 2^k afterwards)."""
        survivors = sorted(masked)
        if not survivors:
            raise SecAggAbortError(f"secagg round {self.round_index}: no client's masked input arrived")
        length = masked[survivors[0]].size
        total = np.zeros(length, dtype=masked[survivors[0]].dtype)
        for u in survivors:
            total += masked[u]
        for u in survivors:
            total -= expand(self._recover(u, "seed", responses), length, bits)
        for u in sorted(set(self.graph) - set(survivors)):
            key = X25519PrivateKey.from_private_bytes(self._recover(u, "mask-key", responses))
            self._remove_pair_masks(total, u, key, survivors, bits)
        return total

    def _remove_pair_masks(
        self, total: np.ndarray, dropped: int, key: X25519PrivateKey, survivors: list[int], bits: int
    ) -> None:
        """Cancel the masks that survivors shared with ``dropped``, whose own input never arrived."""
        if _raw_public(key) != self.directory[dropped].mask_public:
            raise SecAggAbortError(
                f"secagg round {self.round_index}: shares of client {dropped}'s key are inconsistent"
            )
        for v in sorted(self.graph[dropped] & set(survivors)):
            mask = expand(pair_seed(key, self.directory[v].mask_public, self.round_index, dropped, v), total.size, bits)
            if v < dropped:  # v added this mask
                total -= mask
            else:
                total += mask

    def _recover(self, owner: int, kind: ShareKind, responses: dict[int, Responses]) -> bytes:
        shares = [entry[1] for reply in responses.values() if (entry := reply.get(owner)) and entry[0] == kind]
        if len(shares) < self.threshold:
            what = "self-mask seed" if kind == "seed" else "mask key"
            raise SecAggAbortError(
                f"secagg round {self.round_index}: cannot reconstruct client {owner}'s {what}: "
                f"{len(shares)} share(s) from responding clients, threshold {self.threshold}; "
                "too many clients dropped (lower dropout_rate or threshold)"
            )
        return reconstruct(shares, self.threshold)
