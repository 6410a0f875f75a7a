"""Flower 1.41 as an engine for TierBench's rounds (``federation.engine: flower``) and TierBench's attacks
on any Flower app's rounds (``bench.engine.flower.observe``).

Nothing here is imported unless a scenario or a user asks for Flower: ``flwr`` is the optional ``fl``
extra, and ``import_flwr`` turns its absence into a one-line error that says how to install it.
The round loop stays ``bench.engine.federation``'s: the strategy calls its ``begin_round`` and
``finish_round`` (the server side), the ClientApp its ``train_client`` (the client side).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from bench.api.errors import UserError

if TYPE_CHECKING:  # Flower is optional: imported by import_flwr
    from flwr.serverapp import Grid


def import_flwr() -> ModuleType:
    """``flwr``, or a UserError naming the extra that provides it."""
    try:
        import flwr
    except ImportError as error:
        raise UserError(f"federation.engine: flower needs Flower 1.41 (pip install 'tierbench[fl]'): {error}") from None
    return flwr


@dataclass(frozen=True)
class DeployedGrid:
    grid: Grid
    """The Grid of a ServerApp running in this process (deployment)."""
    min_nodes: int
    """SuperNodes started for it: the rounds wait until they are connected."""


GRIDS: list[DeployedGrid] = []
"""Pushed by a deployed ServerApp while its run executes: ``simulation.run_rounds`` sends the rounds
through it instead of starting a simulation."""
