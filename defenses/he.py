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
the decrypted mean carries encryption noise (about 1e-9 of the values at scale 2^40).

Seeded encryption noise. TenSEAL's high-level ``Context`` builds its SEAL parameters itself and leaves
SEAL's random generator unset, so SEAL seeds it from the operating system: key generation and every
encryption drew fresh noise, and ``cost.he.precision_loss`` (and, amplified over Adam rounds, the
trained model and the attack metrics) changed between reruns of the same seed. TenSEAL 0.3.18 offers no
seed, so this module uses the SEAL API that TenSEAL ships (``tenseal.sealapi``) directly: every SEAL
context is built with a ``Blake2xbPRNGFactory`` whose 512-bit seed is derived from the run's transport
generator. A SEAL factory with a fixed seed hands every ``create()`` the same seed, so one context
would give every ciphertext the same noise (and the server could subtract two ciphertexts to learn the
difference of their plaintexts): each ciphertext is therefore encrypted under its own context, seeded
from (run draw, round, client, chunk), and the key pair under one seeded from (run draw, "keys"). The
noise is still real CKKS noise of the usual size; only its source is the run's seed rather than the
OS (a deployment would draw each seed from a CSPRNG; nothing in the bench attacks the encryption
itself). Building a context per ciphertext is a simulation artefact and is left out of ``client_s``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Protocol, TypedDict, TypeVar

import numpy as np
import torch

from bench.api.config import doc
from bench.api.defense import Defense, DefenseSlot, Transport
from bench.api.errors import UserError
from bench.api.registry import DEFENSES
from bench.api.vocabulary import DefenseFamily
from defenses.masking.errors import IndividualUpdatesHiddenError

if TYPE_CHECKING:  # TenSEAL is optional: named in annotations only
    from tenseal.sealapi import SEALContext

log = logging.getLogger(__name__)


class _Saveable(Protocol):
    """A SEAL object that serialises itself to a path (keys, ciphertexts)."""

    def save(self, path: str) -> None: ...


class _Loadable(Protocol):
    """A SEAL object that reads itself from a path under a context."""

    def load(self, context: SEALContext, path: str) -> None: ...


Loaded = TypeVar("Loaded", bound=_Loadable)


def _seal() -> ModuleType:
    """TenSEAL is an optional dependency (``pip install tierbench[he]``): imported on first use, so that
    the registry loads without it. Its bundled SEAL API is what this module uses (module docstring)."""
    try:
        from tenseal import sealapi
    except ModuleNotFoundError:
        raise UserError("the 'he' defense needs TenSEAL: pip install 'tierbench[he]'") from None
    return sealapi


def seed_words(*parts: object) -> list[int]:
    """A 512-bit SEAL PRNG seed (eight 64-bit words) determined by ``parts``."""
    digest = hashlib.sha512("/".join(map(str, parts)).encode()).digest()
    return [int.from_bytes(digest[i : i + 8], "little") for i in range(0, 64, 8)]


def seal_context(config: HEConfig, seed: list[int]) -> SEALContext:
    """A SEAL CKKS context whose random generator (key generation, encryption noise) is ``seed``."""
    seal = _seal()
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(config.poly_modulus_degree)
    try:
        parms.set_coeff_modulus(seal.CoeffModulus.Create(config.poly_modulus_degree, list(config.coeff_mod_bit_sizes)))
    except (ValueError, RuntimeError) as error:
        raise UserError(f"he: SEAL rejects these CKKS parameters: {error}") from None
    parms.set_random_generator(seal.Blake2xbPRNGFactory(seed))
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise UserError(f"he: SEAL rejects these CKKS parameters: {context.parameters_error_message()}")
    return context


def dump(obj: _Saveable) -> bytes:
    """SEAL's own serialisation (compressed); the bundled API writes to paths only."""
    with tempfile.TemporaryDirectory(prefix="tierbench-he-") as folder:
        path = os.path.join(folder, "object")
        obj.save(path)
        with open(path, "rb") as handle:
            return handle.read()


def load(kind: Callable[[], Loaded], context: SEALContext, data: bytes) -> Loaded:
    with tempfile.TemporaryDirectory(prefix="tierbench-he-") as folder:
        path = os.path.join(folder, "object")
        with open(path, "wb") as handle:
            handle.write(data)
        obj = kind()
        obj.load(context, path)
        return obj


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

    def __init__(self, config: HEConfig, seed: list[int]):
        seal = _seal()
        self._context = seal_context(config, seed)
        keys = seal.KeyGenerator(self._context)
        self._secret_key = keys.secret_key()
        public_key = seal.PublicKey()
        keys.create_public_key(public_key)
        self._encoder = seal.CKKSEncoder(self._context)
        self.public_key = dump(public_key)
        """The public key only: what clients receive (with the public parameters, ``config``)."""

    def __repr__(self) -> str:
        return "KeyHolder(<secret key hidden>)"

    def decrypt_sum(self, chunks: list[bytes], length: int) -> np.ndarray:
        seal = _seal()
        decryptor = seal.Decryptor(self._context, self._secret_key)
        values = []
        for chunk in chunks:
            plain = seal.Plaintext()
            decryptor.decrypt(load(seal.Ciphertext, self._context, chunk), plain)
            values.append(np.asarray(self._encoder.decode_double(plain), dtype=np.float64))
        return np.concatenate(values)[:length]


class Client:
    """A client's side: the public parameters and key, and nothing secret."""

    def __init__(self, config: HEConfig, public_key: bytes, seed: list[int]):
        seal = _seal()
        self.config = config
        context = seal_context(config, seed)
        self._public_key = load(seal.PublicKey, context, public_key)
        self._encoder = seal.CKKSEncoder(context)

    def encrypt(self, values: np.ndarray, seeds: list[list[int]]) -> tuple[Ciphertexts, float]:
        """Encrypt ``values`` chunk by chunk, chunk i with noise from ``seeds[i]``; returns the message
        and the seconds spent encoding, encrypting and serialising (not building the seeded contexts)."""
        seal = _seal()
        slots, chunks, seconds = self.config.slots, [], 0.0
        for index, start in enumerate(range(0, values.size, slots)):
            encryptor = seal.Encryptor(seal_context(self.config, seeds[index]), self._public_key)
            began = time.perf_counter()
            plain, cipher = seal.Plaintext(), seal.Ciphertext()
            self._encoder.encode(values[start : start + slots].tolist(), 2.0**self.config.scale_bits, plain)
            encryptor.encrypt(plain, cipher)
            chunks.append(dump(cipher))
            seconds += time.perf_counter() - began
        return Ciphertexts(tuple(chunks), values.size), seconds


def encrypt(client: Client, values: np.ndarray, seed: int) -> Ciphertexts:
    """One client's message, its chunks' noise seeded from ``seed``."""
    chunks = -(-values.size // client.config.slots)
    return client.encrypt(values, [seed_words(seed, i) for i in range(chunks)])[0]


def add_ciphertexts(context: SEALContext, messages: list[Ciphertexts]) -> list[bytes]:
    """The server's side: deserialise and add chunk-wise; it holds no secret key."""
    seal = _seal()
    evaluator = seal.Evaluator(context)
    sums = [load(seal.Ciphertext, context, chunk) for chunk in messages[0].chunks]
    for message in messages[1:]:
        for total, chunk in zip(sums, message.chunks, strict=True):
            evaluator.add_inplace(total, load(seal.Ciphertext, context, chunk))
    return [dump(total) for total in sums]


class _PendingRound(TypedDict):
    """What ``encode`` keeps of a round until ``aggregate``."""

    shares: dict[int, float]
    client_s: float
    dtype: torch.dtype
    device: torch.device
    bytes_down: float
    reference: dict[int, np.ndarray]
    """The plain updates, only to measure the precision loss; dropped in ``aggregate``."""


class HETransport(Transport):
    """Carries CKKS ciphertexts; only the key holder can decrypt, and it decrypts only the sum."""

    def __init__(self, config: HEConfig):
        self.config = config
        self._key_holder: KeyHolder | None = None
        self._client: Client | None = None  # public parameters and key only
        self._server_context: SEALContext | None = None
        self._has_context: set[int] = set()
        self._pending: dict[int, _PendingRound] = {}
        self.rounds: list[dict[str, float]] = []

    def __repr__(self) -> str:
        return f"HETransport({self.config!r})"

    def _ensure_keys(self, draw: int) -> None:
        # Key generation is deferred to the first round so that listing or validating scenarios is cheap.
        if self._key_holder is None:
            self._key_holder = KeyHolder(self.config, seed_words(draw, "keys"))
            self._client = Client(self.config, self._key_holder.public_key, seed_words(draw, "client"))
            self._server_context = seal_context(self.config, seed_words(draw, "server"))

    def encode(
        self, round_index: int, updates: dict[int, torch.Tensor], weights: dict[int, float], rng: torch.Generator
    ) -> dict[int, Ciphertexts]:
        draw = int(torch.randint(2**62, (1,), generator=rng))  # keys and every ciphertext's noise come from it
        self._ensure_keys(draw)
        ids = sorted(updates)
        total_weight = float(sum(weights[c] for c in ids))
        shares = {c: float(weights[c]) / total_weight for c in ids}
        plain = {c: updates[c].detach().to("cpu", torch.float64).numpy() for c in ids}
        messages, seconds = {}, 0.0
        for c in ids:
            seeds = [seed_words(draw, round_index, c, i) for i in range(-(-plain[c].size // self.config.slots))]
            messages[c], spent = self._client.encrypt(plain[c] * shares[c], seeds)
            seconds += spent
        newcomers = set(ids) - self._has_context
        self._has_context |= newcomers
        first = updates[ids[0]]
        self._pending[round_index] = {
            "shares": shares,
            "client_s": seconds / len(ids),
            "dtype": first.dtype,
            "device": first.device,
            "bytes_down": len(self._key_holder.public_key) * len(newcomers) / len(ids),
            "reference": plain,  # only to measure precision loss; dropped in aggregate
        }
        return messages

    def aggregate(self, round_index: int, messages: dict[int, Ciphertexts], weights: dict[int, float]) -> torch.Tensor:
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

    def message_bytes(self, message: Ciphertexts) -> int:
        return sum(len(chunk) for chunk in message.chunks)

    def decode_individual(self, messages: dict[int, Ciphertexts]) -> dict[int, torch.Tensor]:
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
    """CKKS homomorphic encryption of client updates (SEAL via TenSEAL), seeded from the run; hides every update from the server."""

    slot = DefenseSlot.TRANSPORT
    family = DefenseFamily.HE
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
