"""Secure aggregation (Bonawitz et al. 2017; SecAgg+ of Bell et al. 2020) as a protocol simulation.

The package name starts with ``_`` so the plugin loader does not treat it as a defense; the
registered defense lives in ``defenses/secagg.py``. Modules, bottom up:

- ``material``    a wrapper that keeps key bytes out of ``repr`` and logs, and the entropy source
- ``shamir``      t-out-of-n Shamir sharing over the Mersenne prime field 2^521 - 1
- ``prg``         HKDF seed derivation and the ChaCha20 mask generator
- ``fixedpoint``  clipping, scaling and reduction modulo 2^k
- ``graph``       the random Harary graph SecAgg+ shares masks over
- ``parties``     one client and the server, each with only its own key material
- ``protocol``    one round, phase by phase, with dropouts, timings and byte counts
"""
