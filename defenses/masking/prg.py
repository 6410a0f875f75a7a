"""Seed derivation (HKDF-SHA256) and mask expansion with a ChaCha20 keystream.

A 32-byte seed keys ChaCha20 with a zero nonce; the keystream, read as little-endian 32- or 64-bit
words, is the mask. Every seed is used for one mask only, so the fixed nonce never repeats under a
key. Expansion is one call into OpenSSL plus a zero-copy ``numpy`` view: no Python loop over elements.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE = bytes(16)  # cryptography's ChaCha20 takes a 16-byte nonce: 4-byte counter + 12-byte nonce


def word_dtype(bits: int) -> np.dtype:
    """The unsigned word that holds residues modulo 2^bits (arithmetic wraps in it)."""
    return np.dtype("<u4") if bits <= 32 else np.dtype("<u8")


def derive_seed(shared_secret: bytes, label: bytes) -> bytes:
    """A 32-byte PRG seed from a Diffie-Hellman output, bound to ``label`` (purpose, round, pair)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(shared_secret)


def expand(seed: bytes, length: int, bits: int) -> np.ndarray:
    """``length`` pseudorandom words (read-only) from ``seed``; uniform modulo 2^bits once reduced."""
    dtype = word_dtype(bits)
    keystream = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor().update(bytes(length * dtype.itemsize))
    return np.frombuffer(keystream, dtype=dtype)
