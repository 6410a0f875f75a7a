"""TierBench's attacks on an existing Flower app (bench.engine.flower.observe, examples/flower_app)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr")

from bench.store.results import ResultStore  # noqa: E402
from bench.testing.flower import InProcessGrid  # noqa: E402
from examples.flower_app import app  # noqa: E402


def test_the_example_app_is_attacked_from_its_recorded_server_view_and_rows_land_in_the_store(tmp_path):
    rows = app.run(InProcessGrid(app.client_app, app.NUM_CLIENTS), store=str(tmp_path / "store"))
    got = {(r.attack, r.metric): r.value for r in rows}
    assert {r.attack for r in rows} == set(app.ATTACKS) and all(r.status == "ok" for r in rows)
    # The updates FedAvg received are exact SGD steps: rows of tokens absent from a client's batch are
    # exactly zero, so every recovered token is one the client trained on (precision 1 on token sets).
    assert got[("inversion-tokens", "inversion.token_f1")] > 0.5
    assert 0.0 <= got[("mia-loss", "mia.auc")] <= 1.0
    stored = ResultStore(tmp_path / "store").rows()
    assert len(stored) == len(rows) and {r["scenario"] for r in stored} == {"flower-app-example"}


def test_the_recording_sees_what_fedavg_received_and_applied():
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedAvg

    from bench.engine.flower.observe import RecordingStrategy, flatten

    strategy = RecordingStrategy(FedAvg(fraction_evaluate=0.0, min_train_nodes=app.NUM_CLIENTS,
                                        min_available_nodes=app.NUM_CLIENTS))
    initial = ArrayRecord(app.MODEL.state_dict())
    result = strategy.start(grid=InProcessGrid(app.client_app, app.NUM_CLIENTS), initial_arrays=initial, num_rounds=1)
    (record,) = strategy.transcript.rounds
    assert record.sampled == [0, 1]  # partition ids, from client_mod, not Flower's node ids
    assert torch.equal(record.global_before, flatten(initial)[2])
    # FedAvg weighs by num-examples (equal here): the aggregate applied is the mean of what was received.
    mean = (record.transmitted[0] + record.transmitted[1]) / 2
    assert torch.isfinite(mean).all()
    assert torch.allclose(record.aggregate, mean, atol=1e-6), (record.aggregate - mean).abs().max()
    assert torch.equal(record.aggregate, flatten(result.arrays)[2] - record.global_before)  # what FedAvg applied
    assert record.weights == {0: app.RECORDS // 2, 1: app.RECORDS // 2}


def test_the_example_app_runs_on_flowers_simulation_engine(tmp_path, monkeypatch):
    """Flower's simulation engine starts Ray: about 15 s on 2 idle cores (in the default suite, as CI runs it)."""
    monkeypatch.setenv("TIERBENCH_STORE", str(tmp_path / "store"))
    app.simulate()
    stored = ResultStore(tmp_path / "store").rows()
    assert {r["attack"] for r in stored} == set(app.ATTACKS)
