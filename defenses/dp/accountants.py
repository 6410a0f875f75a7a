"""The shipped accountants as ``bench.api.privacy.Accountant`` objects (Opacus' ``IAccountant`` contract).

Each is named by the ``accountant`` word a DP defense's config takes and stores (``dp.accountant``) and
computes exactly what ``accounting.epsilon_for`` computes for its history, so a ledger's epsilon and an
accountant's agree bit for bit:

- ``rdp`` (Mironov 2017) and ``prv`` (Gopi et al. 2021), through Opacus: Poisson sampling at rate q,
  add/remove-one neighbours.
- ``rdp-wor`` (Wang, Balle, Kasiviswanathan 2019; ``wor.py``): a fixed-size sample without replacement,
  replace-one neighbours.
"""

from __future__ import annotations

from bench.api.privacy import Accountant
from defenses.dp.accounting import epsilon_for


class _ByName(Accountant):
    """An accountant whose epsilon is ``accounting.epsilon_for`` under its mechanism's name."""

    def get_epsilon(self, delta: float) -> float:
        return epsilon_for(self.history, delta, self.mechanism())


class RDPAccountant(_ByName):
    @classmethod
    def mechanism(cls) -> str:
        return "rdp"


class PRVAccountant(_ByName):
    @classmethod
    def mechanism(cls) -> str:
        return "prv"


class WithoutReplacementRDPAccountant(_ByName):
    @classmethod
    def mechanism(cls) -> str:
        return "rdp-wor"


ACCOUNTANT_TYPES: dict[str, type[Accountant]] = {
    cls.mechanism(): cls for cls in (RDPAccountant, PRVAccountant, WithoutReplacementRDPAccountant)
}
"""Accountant word (``dp.accountant``) -> its class; every word ``accounting.ACCOUNTANTS`` knows has one."""


def create_accountant(mechanism: str) -> Accountant:
    """A fresh accountant for ``mechanism`` (as Opacus' ``create_accountant``)."""
    return ACCOUNTANT_TYPES[mechanism]()
