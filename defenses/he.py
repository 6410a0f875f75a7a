"""Homomorphic encryption: clients send CKKS ciphertexts; the server adds them without a key.

Implements additively homomorphic aggregation with the CKKS scheme (Cheon, Kim, Kim, Song,
"Homomorphic Encryption for Arithmetic of Approximate Numbers", ASIACRYPT 2017) through TenSEAL
(Benaissa et al. 2021, Microsoft SEAL underneath), in the style of HE-based federated averaging
(e.g. Zhang et al., "BatchCrypt", USENIX ATC 2020; Jin et al., "FedML-HE", 2023).

Trust model. A single key holder generates the CKKS key pair and hands the public context (parameters
and public key, no secret key) to the clients and the server. Each client encrypts its weighted flat
update w_u * x_u (w_u = its example count over the round's total, public) in chunks of N/2 slots and
serialises the ciphertexts: those bytes are all the server sees. The server deserialises them with
the public context, adds them, and forwards the summed ciphertext to the key holder, who decrypts
that one sum and returns the weighted mean. The key holder stands in for threshold (multi-party)
CKKS decryption, where the clients jointly hold the secret key; it must not collude with the server,
which could otherwise decrypt any client's ciphertext. The key holder is not a vantage of the bench.

Departures: keys are generated once per run (not per round); no dropout simulation (the sum covers
whatever arrived and the weights are renormalised over it, as in ``secagg``); CKKS is approximate, so
the decrypted mean carries encryption noise (about 1e-9 of the values at scale 2^40), and that noise
comes from SEAL's own random generator, which TenSEAL does not let us seed: runs with ``he`` repeat
only up to that noise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.config import doc
from bench.errors import UserError
from bench.registry import DEFENSES
from defenses._secagg.errors import IndividualUpdatesHiddenError
from defenses.base import Defense, DefenseSlot, Transport

log = logging.getLogger(__name__)


def _tenseal() -> Any:
    """TenSEAL is an optional dependency (``pip install tierbench[he]``): imported on first use, so that
    the registry loads without it."""
    try:
        import tenseal
    except ModuleNotFoundError:
        raise UserError("the 'he' defense needs TenSEAL: pip install 'tierbench[he]'") from None
    return tenseal


# SEAL's largest total coefficient modulus (bits) at 128-bit security, per polynomial degree.
_MAX_MODULUS_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True, kw_only=True)
class HEConfig:
    poly_modulus_degree: int = doc(
        "CKKS ring dimension N (power of two, 1024..32768); a ciphertext packs N/2 values", 8192
    )
    coeff_mod_bit_sizes: tuple[int, ...] = doc(
        "Bit sizes of the coefficient modulus chain; their sum must fit N at 128-bit security (218 bits for N = 8192)",
        (60, 40, 40, 60),
    )
    scale_bits: int = doc("log2 of the CKKS global scale (fixed-point precision of the encoding)", 40)

    def __post_init__(self) -> None:
        if self.poly_modulus_degree not in _MAX_MODULUS_BITS:
            raise ValueError(
                f"poly_modulus_degree must be one of {sorted(_MAX_MODULUS_BITS)}, got {self.poly_modulus_degree}"
            )
        if len(self.coeff_mod_bit_sizes) < 2:
            raise ValueError("coeff_mod_bit_sizes needs at least two primes")
        limit = _MAX_MODULUS_BITS[self.poly_modulus_degree]
        if sum(self.coeff_mod_bit_sizes) > limit:
            raise ValueError(
                f"coeff_mod_bit_sizes sum to {sum(self.coeff_mod_bit_sizes)} bits, more than the {limit} "
                f"that N = {self.poly_modulus_degree} allows at 128-bit security"
            )
        if not 20 <= self.scale_bits < max(self.coeff_mod_bit_sizes):
            raise ValueError(f"scale_bits must lie in [20, {max(self.coeff_mod_bit_sizes)}), got {self.scale_bits}")

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2


@dataclass(frozen=True)
class Ciphertexts:
    """One client's message: serialised CKKS ciphertexts of consecutive N/2-value chunks."""

    chunks: tuple[bytes, ...]
    length: int

    def __repr__(self) -> str:
        return f"Ciphertexts(chunks={len(self.chunks)}, bytes={sum(map(len, self.chunks))}, length={self.length})"


class KeyHolder:
    """Owns the secret key; decrypts only the aggregate the server forwards."""

    def __init__(self, config: HEConfig):
        ts = _tenseal()
        try:
            self._context = ts.context(
                ts.SCHEME_TYPE.CKKS,
                poly_modulus_degree=config.poly_modulus_degree,
                coeff_mod_bit_sizes=list(config.coeff_mod_bit_sizes),
            )
        except ValueError as error:
            raise UserError(f"he: TenSEAL rejects these CKKS parameters: {error}") from None
        self._context.global_scale = 2.0**config.scale_bits
        self.public_context = self._context.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
        """Parameters and public key only: what clients and the server receive."""

    def __repr__(self) -> str:
        return "KeyHolder(<secret key hidden>)"

    def decrypt_sum(self, chunks: list[bytes], length: int) -> np.ndarray:
        ts = _tenseal()
        values = [ts.ckks_vector_from(self._context, chunk).decrypt() for chunk in chunks]
        return np.concatenate([np.asarray(v, dtype=np.float64) for v in values])[:length]


def encrypt(public_context: Any, values: np.ndarray, slots: int) -> Ciphertexts:
    """A client's side: encrypt ``values`` chunk by chunk and serialise each ciphertext."""
    ts = _tenseal()
    chunks = tuple(
        ts.ckks_vector(public_context, values[start : start + slots].tolist()).serialize()
        for start in range(0, values.size, slots)
    )
    return Ciphertexts(chunks, values.size)


def add_ciphertexts(public_context: Any, messages: list[Ciphertexts]) -> list[bytes]:
    """The server's side: deserialise and add chunk-wise; it holds no secret key."""
    ts = _tenseal()
    sums = [ts.ckks_vector_from(public_context, chunk) for chunk in messages[0].chunks]
    for message in messages[1:]:
        for total, chunk in zip(sums, message.chunks, strict=True):
            total.add_(ts.ckks_vector_from(public_context, chunk))
    return [total.serialize() for total in sums]


class HETransport(Transport):
    """Carries CKKS ciphertexts; only the key holder can decrypt, and it decrypts only the sum."""

    def __init__(self, config: HEConfig):
        self.config = config
        self._key_holder: KeyHolder | None = None
        self._client_context: Any = None  # tenseal.Context with the public key only
        self._server_context: Any = None
        self._has_context: set[int] = set()
        self._pending: dict[int, dict[str, Any]] = {}
        self.rounds: list[dict[str, float]] = []

    def __repr__(self) -> str:
        return f"HETransport({self.config!r})"

    def _ensure_keys(self) -> None:
        # Key generation is deferred to the first round so that listing or validating scenarios is cheap.
        if self._key_holder is None:
            ts = _tenseal()
            self._key_holder = KeyHolder(self.config)
            self._client_context = ts.context_from(self._key_holder.public_context)
            self._server_context = ts.context_from(self._key_holder.public_context)

    def encode(
        self, round_index: int, updates: dict[int, torch.Tensor], weights: dict[int, float], rng: torch.Generator
    ) -> dict[int, Ciphertexts]:
        self._ensure_keys()
        ids = sorted(updates)
        total_weight = float(sum(weights[c] for c in ids))
        shares = {c: float(weights[c]) / total_weight for c in ids}
        plain = {c: updates[c].detach().to("cpu", torch.float64).numpy() for c in ids}
        messages, seconds = {}, 0.0
        for c in ids:
            start = time.perf_counter()
            messages[c] = encrypt(self._client_context, plain[c] * shares[c], self.config.slots)
            seconds += time.perf_counter() - start
        newcomers = set(ids) - self._has_context
        self._has_context |= newcomers
        first = updates[ids[0]]
        self._pending[round_index] = {
            "shares": shares,
            "client_s": seconds / len(ids),
            "dtype": first.dtype,
            "device": first.device,
            "bytes_down": len(self._key_holder.public_context) * len(newcomers) / len(ids),
            "reference": plain,  # only to measure precision loss; dropped in aggregate
        }
        return messages

    def aggregate(self, round_index: int, messages: dict[int, Any], weights: dict[int, float]) -> torch.Tensor:
        pending = self._pending.pop(round_index, None)
        if pending is None:
            raise RuntimeError(f"he: aggregate for round {round_index} without a matching encode")
        arrived = sorted(messages)
        start = time.perf_counter()
        summed = add_ciphertexts(self._server_context, [messages[c] for c in arrived])
        server_s = time.perf_counter() - start
        start = time.perf_counter()
        total = self._key_holder.decrypt_sum(summed, messages[arrived[0]].length)
        keyholder_s = time.perf_counter() - start
        weight = sum(pending["shares"][c] for c in arrived)
        mean = total / weight
        reference = sum(pending["reference"][c] * (pending["shares"][c] / weight) for c in arrived)
        bytes_up = sum(self.message_bytes(messages[c]) for c in arrived) / len(pending["shares"])
        self.rounds.append(
            {
                "client_s": pending["client_s"],
                "server_s": server_s,
                "keyholder_s": keyholder_s,
                "bytes_up": bytes_up,
                "bytes_down": pending["bytes_down"],
                "plain_bytes": 4.0 * mean.size * len(arrived) / len(pending["shares"]),
                "keyholder_bytes": float(sum(map(len, summed))),
                "precision_loss": float(np.abs(mean - reference).max()) if mean.size else 0.0,
            }
        )
        log.debug(
            "he round %d: %d clients, client %.4fs, server %.4fs",
            round_index,
            len(arrived),
            pending["client_s"],
            server_s,
        )
        return torch.from_numpy(mean).to(dtype=pending["dtype"], device=pending["device"])

    def message_bytes(self, message: Any) -> int:
        return sum(len(chunk) for chunk in message.chunks)

    def decode_individual(self, messages: dict[int, Any]) -> dict[int, torch.Tensor]:
        raise IndividualUpdatesHiddenError(
            "he hides each client's update from the server: it holds ciphertexts and no secret key"
        )

    def summary(self) -> dict[str, float]:
        if not self.rounds:
            return {}
        mean = {key: sum(r[key] for r in self.rounds) / len(self.rounds) for key in self.rounds[0]}
        return {
            "client_s": mean["client_s"],
            "server_s": mean["server_s"],
            "keyholder_s": mean["keyholder_s"],
            "bytes_up": mean["bytes_up"],
            "bytes_down": mean["bytes_down"],
            "keyholder_bytes": mean["keyholder_bytes"],
            "expansion": mean["bytes_up"] / mean["plain_bytes"],
            "precision_loss": max(r["precision_loss"] for r in self.rounds),
        }


@DEFENSES.register("he")
class HomomorphicEncryption(Defense):
    """CKKS homomorphic encryption of client updates (TenSEAL); hides every update from the server."""

    slot = DefenseSlot.TRANSPORT
    Config = HEConfig

    def __init__(self, config: HEConfig):
        super().__init__(config)
        self._transport = HETransport(config)

    def __repr__(self) -> str:
        return f"HomomorphicEncryption({self.config!r})"

    def transport(self) -> HETransport:
        return self._transport

    def costs(self) -> dict[str, float]:
        """Protocol costs as ``cost.he.<name>`` (the engine's own ``cost.client_s`` etc. cover the whole
        round). Means per round: ``client_s`` (encryption per client), ``server_s`` (deserialise and add),
        ``keyholder_s`` (decrypt the sum), ``bytes_up`` per client, ``bytes_down`` per client (the public
        context, once per client, spread over rounds), ``keyholder_bytes`` (the summed ciphertext),
        ``expansion`` = bytes up over the float32 size of the updates, ``precision_loss`` = largest
        absolute error of the decrypted mean."""
        return {f"cost.{self.name}.{key}": value for key, value in self._transport.summary().items()}
