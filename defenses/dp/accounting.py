"""Privacy accounting shared by ``dp-local`` and ``dp-central``: accountants over a ledger.

A ledger keeps, per privacy unit (a client for record-level DP, the federation for user-level DP),
the composed history of subsampled Gaussian mechanisms as ``(noise_multiplier, sample_rate, steps)``
triples, exactly the form Opacus accountants keep in ``accountant.history``. Epsilon is computed on
demand from a fresh accountant, so the ledger itself holds no accountant state and is cheap to copy.

Accountants (``ACCOUNTANTS``), each for one way of sampling and one neighbouring relation:

- ``rdp`` and ``prv`` (Opacus): Poisson sampling at rate q, add/remove-one neighbours; the noise
  multiplier is the noise std over the L2 sensitivity C of the clipped sum.
- ``rdp-wor`` (``defenses/dp/wor.py``): sampling a fixed-size subset without replacement at ratio
  q = m/n, replace-one neighbours (Wang, Balle, Kasiviswanathan 2019); the noise multiplier is the
  noise std over the replace-one sensitivity of the sum, which is 2C for clipped updates.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from defenses.dp.wor import wor_calibrate, wor_epsilon

History = list[tuple[float, float, int]]


def _opacus_epsilon(history: History, delta: float, accountant: str) -> float:
    engine = create_accountant(mechanism=accountant)
    engine.history = [(float(z), float(q), int(steps)) for z, q, steps in history]
    with _quiet_accountant():
        return float(engine.get_epsilon(delta=delta))


ACCOUNTANTS: dict[str, Callable[[History, float, str], float]] = {
    "rdp": _opacus_epsilon,  # Mironov 2017, Poisson sampling, add/remove
    "prv": _opacus_epsilon,  # Gopi et al. 2021, Poisson sampling, add/remove
    "rdp-wor": lambda history, delta, accountant: wor_epsilon(history, delta),  # WBK 2019, fixed size, replace-one
}


def epsilon_for(history: History, delta: float, accountant: str) -> float:
    """Epsilon of the composed history at ``delta``; inf when any step ran without noise."""
    if not history:
        return 0.0
    if any(z <= 0.0 and q > 0.0 and steps > 0 for z, q, steps in history):
        return math.inf  # a noiseless release of a sampled record: no finite guarantee
    return ACCOUNTANTS[accountant](history, delta, accountant)


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """A noise multiplier whose epsilon is at most the target and within 1% of it (Opacus' bisection,
    tolerance 0.01 * min(1, target)). Accountants: ``rdp`` (Mironov 2017) or ``prv`` (Gopi et al. 2021)
    through Opacus; ``rdp-wor`` by the same bisection over ``wor_epsilon``."""
    if steps <= 0:
        return 0.0
    tolerance = 0.01 * min(1.0, target_epsilon)
    return CALIBRATORS.get(accountant, _opacus_calibrate)(target_epsilon, delta, sample_rate, steps, accountant, tolerance)


def _opacus_calibrate(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str, tolerance: float
) -> float:
    with _quiet_accountant():
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=tolerance,
            )
        )


CALIBRATORS: dict[str, Callable[..., float]] = {
    "rdp-wor": lambda target, delta, q, steps, accountant, tolerance: wor_calibrate(target, delta, q, steps, tolerance),
}
"""Accountants with their own calibration; the others go through Opacus' ``get_noise_multiplier``."""


@contextlib.contextmanager
def _quiet_accountant() -> Iterator[None]:
    """RDP warns when the optimal order sits at the edge of its grid (the value is still a valid upper
    bound) and PRV takes log(1 - q) = -inf at q = 1 (handled); both would repeat on every report."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.filterwarnings("ignore", message="divide by zero", category=RuntimeWarning)
        yield


@dataclass
class Ledger:
    """Per-unit composition history of subsampled Gaussian steps."""

    histories: dict[int, History] = field(default_factory=dict)

    def record(self, unit: int, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Append ``steps`` steps; consecutive entries with the same (z, q) are merged, as Opacus does."""
        if steps <= 0:
            return
        history = self.histories.setdefault(unit, [])
        if history and history[-1][0] == noise_multiplier and history[-1][1] == sample_rate:
            z, q, n = history[-1]
            history[-1] = (z, q, n + steps)
        else:
            history.append((noise_multiplier, sample_rate, steps))

    def steps(self, unit: int) -> int:
        return sum(n for _, _, n in self.histories.get(unit, []))

    def epsilons(self, delta: float, accountant: str) -> dict[int, float]:
        by_history: dict[tuple, float] = {}  # clients with the same participations share one computation
        for history in self.histories.values():
            key = tuple(history)
            if key not in by_history:
                by_history[key] = epsilon_for(history, delta, accountant)
        return {unit: by_history[tuple(h)] for unit, h in self.histories.items()}

    def worst(self, delta: float, accountant: str) -> tuple[int | None, float]:
        """The unit with the largest epsilon (ties: the one with most steps) and that epsilon."""
        epsilons = self.epsilons(delta, accountant)
        if not epsilons:
            return None, 0.0
        unit = max(epsilons, key=lambda u: (epsilons[u], self.steps(u)))
        return unit, epsilons[unit]
