"""dp-central through the engine (``bench.engine.federation.run``), not by calling its hooks: the noise on
each round's aggregate has the claimed std z C / m (m = clients whose update the aggregate holds),
with secure aggregation, with dropouts, and without the transport clipping any noisy coordinate.

Clients run a trainer that does not move the weights, so every update is exactly zero and each
round's aggregate is the noise alone. The survivors of a round are read from the transcript (the
masked inputs that reached the server), independently of the engine's wiring.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from bench.api.config import bind
from bench.api.registry import DEFENSES
from bench.api.transcript import GroundTruth, Transcript
from bench.engine import federation as fl
from bench.engine.runner import plan, prepare
from tests.helpers import make_scenario

CLIENTS, ROUNDS = 4, 6


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    scenario = make_scenario(
        tmp_path_factory.mktemp("dp-engine"),
        federation={"clients": CLIENTS, "clients_per_round": CLIENTS, "rounds": ROUNDS, "local_steps": 1},
    )
    return prepare(scenario, 0, plan(scenario))


def build(name: str, **params):
    cls = DEFENSES.get(name)
    return cls(bind(cls.Config, params, file=None, key=name))


def run_with(prepared, defenses: list) -> Transcript:
    """One federation run with ``defenses`` and zero updates; checks and setup as the runner does them."""
    for defense in defenses:
        assert defense.check_compatible([d for d in defenses if d is not defense], prepared.scenario) is None
        defense.setup(prepared.scenario, {c: len(d.members) for c, d in enumerate(prepared.clients)},
                      peers=[d for d in defenses if d is not defense])
    fed = prepared.fed
    fed.defenses, fed.keep = defenses, frozenset({"aggregates", "client_updates"})
    fed.trainer = lambda job: {"loss": 0.0}  # the weights stay put: every client's update is 0
    transcript = Transcript()
    fl.run(fed, transcript, GroundTruth())
    return transcript


def noise_ratios(transcript: Transcript, z: float, clip: float) -> list[float]:
    """Per round: the aggregate's std over the claimed z C / m, m = inputs that reached the server."""
    ratios = []
    for record in transcript.rounds:
        survivors = len(record.transmitted)
        if survivors:
            ratios.append(float(record.aggregate.std()) / (z * clip / survivors))
    return ratios


def assert_gaussian(noise: torch.Tensor) -> None:
    """About 4.55% of a Gaussian's draws lie beyond 2 std; clipped noise has far fewer (thin tails)."""
    beyond = float((noise.abs() > 2 * noise.std()).float().mean())
    assert 0.038 < beyond < 0.053, beyond


def test_client_noise_under_secagg_is_not_clipped_by_the_encoding(prepared):
    # z C / sqrt(n) = 1: each client's noisy coordinate is ~N(0, 1), which secagg's default range +-1 clipped
    z, clip = 2.0, 1.0
    dp = build("dp-central", noise_multiplier=z, clip_norm=clip)
    secagg = build("secagg")
    transcript = run_with(prepared, [dp, secagg])
    assert dp.noise_at == "clients"
    ratios = noise_ratios(transcript, z, clip)
    assert len(ratios) == ROUNDS and all(abs(r - 1) < 0.04 for r in ratios), ratios
    for record in transcript.rounds:
        assert_gaussian(record.aggregate)
    costs = secagg.costs()
    assert costs["cost.secagg.clipped_coordinates"] == 0.0
    assert costs["cost.secagg.range"] == pytest.approx(clip + 12 * z * clip / math.sqrt(CLIENTS))


@pytest.mark.parametrize("noise_at", ["clients", "server"])
def test_noise_keeps_its_claimed_std_when_clients_drop_out(prepared, noise_at):
    z, clip = 2.0, 1.0
    dp = build("dp-central", noise_multiplier=z, clip_norm=clip, noise_at=noise_at)
    secagg = build("secagg", dropout_rate=0.5, threshold=0.2, skip_aborted_rounds=True)
    transcript = run_with(prepared, [dp, secagg])
    survivors = [len(r.transmitted) for r in transcript.rounds]
    assert any(0 < m < CLIENTS for m in survivors), f"no round lost clients: {survivors}"
    ratios = noise_ratios(transcript, z, clip)
    assert ratios and all(abs(r - 1) < 0.04 for r in ratios), (survivors, ratios)


def test_noise_on_plain_transport_has_the_claimed_std(prepared):
    z, clip = 1.5, 0.5
    dp = build("dp-central", noise_multiplier=z, clip_norm=clip)
    transcript = run_with(prepared, [dp])
    ratios = noise_ratios(transcript, z, clip)
    assert dp.noise_at == "server" and all(abs(r - 1) < 0.04 for r in ratios), ratios


def test_a_coordinate_beyond_the_declared_bound_stops_the_run_instead_of_being_clipped():
    from defenses.masking.errors import EncodingRangeError

    declares = SimpleNamespace(name="declares", coordinate_bound=lambda: 2.0)
    secagg = build("secagg")
    secagg.transport().bound_sources = [declares]
    updates = {0: torch.tensor([0.5, 1.5]), 1: torch.tensor([0.1, 0.2])}
    secagg.transport().encode(0, updates, {0: 1.0, 1: 1.0}, torch.Generator().manual_seed(0))  # within +-2: fine
    with pytest.raises(EncodingRangeError, match="declares"):
        secagg.transport().encode(1, {0: torch.tensor([2.5, 0.0]), 1: torch.zeros(2)}, {0: 1.0, 1: 1.0},
                                  torch.Generator().manual_seed(0))
