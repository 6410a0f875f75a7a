"""``federation.engine: flower``: a prepared run's rounds through Flower's simulation engine (or, inside a
deployed ServerApp, through its Grid: ``bench.engine.flower.deployment``).

The ServerApp runs in this process (a thread of ``run_simulation``) with ``TierBenchStrategy`` over
the run ``runner.prepare`` built, so the transcript and ground truth land where the in-process engine
puts them and the rest of the run (utility, attacks, scoring, rows) is unchanged. ClientApps run in
Flower's Ray actors (other processes), one SuperNode per TierBench client.

Flower and Ray write state (``FLWR_HOME``) and sockets/logs (Ray's temp dir) under one folder per
run: ``$TIERBENCH_FLOWER_HOME`` when set (kept, for inspection), else a fresh private temporary folder
removed afterwards; never ``~/.flwr`` or a shared ``/tmp/ray``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bench.api.vocabulary import JsonObject
from bench.engine import federation as fl
from bench.engine.flower import GRIDS, import_flwr

if TYPE_CHECKING:  # the runner imports the engine; these are only named here
    from flwr.app import Context

    from bench.engine.flower.strategy import TierBenchStrategy
    from bench.engine.runner import Prepared
    from bench.spec.scenario import Scenario


def run_rounds(p: Prepared) -> fl.FederationStats:
    """Every round of prepared run ``p`` through Flower's simulation engine; fills ``p.transcript``, ``p.truth``."""
    import_flwr()
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from bench.engine.flower import client
    from bench.engine.flower.strategy import TierBenchStrategy

    nodes = p.scenario.federation.clients  # one SuperNode per client in simulation
    strategy = TierBenchStrategy(p, min_nodes=GRIDS[-1].min_nodes if GRIDS else nodes)
    if GRIDS:  # inside a deployed ServerApp: its SuperLink's SuperNodes train
        strategy.start(grid=GRIDS[-1].grid, initial_arrays=strategy.initial_arrays(), num_rounds=p.scenario.federation.rounds)
        return _finish(p, strategy)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid=grid, initial_arrays=strategy.initial_arrays(), num_rounds=p.scenario.federation.rounds)

    with flower_home() as home:
        run_simulation(server_app=server, client_app=client.app, num_supernodes=nodes,
                       backend_config=backend_config(p.scenario, home))
    return _finish(p, strategy)


def _finish(p: Prepared, strategy: TierBenchStrategy) -> fl.FederationStats:
    if len(p.transcript.rounds) != p.scenario.federation.rounds:  # Flower logs a failed round and goes on
        raise RuntimeError(f"Flower ran {len(p.transcript.rounds)} of {p.scenario.federation.rounds} rounds")
    return strategy.finish()


def backend_config(scenario: Scenario, home: Path) -> JsonObject:
    """One CPU per ClientApp actor, as many actors as the round's clients or this machine's cores allow."""
    workers = max(1, min(scenario.federation.clients_per_round, os.cpu_count() or 1))
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": workers, "num_gpus": 0, "_temp_dir": str(home / "ray"),
                          "include_dashboard": False}}


@contextlib.contextmanager
def flower_home(name: str = "") -> Iterator[Path]:
    """The run's folder for Flower and Ray, with ``FLWR_HOME`` and ``RAY_TMPDIR`` pointing into it meanwhile;
    ``name`` (the run's id) keeps runs apart in ``$TIERBENCH_FLOWER_HOME`` (a SuperLink's database is per run)."""
    configured = os.environ.get("TIERBENCH_FLOWER_HOME")
    home = Path(configured) / name if configured else Path(tempfile.mkdtemp(prefix="tierbench-flower-"))
    (home / "flwr").mkdir(parents=True, exist_ok=True)
    (home / "ray").mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("FLWR_HOME", "RAY_TMPDIR")}
    os.environ.update(FLWR_HOME=str(home / "flwr"), RAY_TMPDIR=str(home / "ray"))
    try:
        yield home
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if not configured:
            shutil.rmtree(home, ignore_errors=True)
