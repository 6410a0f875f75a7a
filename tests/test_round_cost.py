"""The server's work on full-size updates: the same numbers as before, without avoidable full-size copies.

On SmolLM2-135M an update is 135M floats (540 MB); every fresh tensor of that size costs its page
faults, and a round made about a dozen of them besides training (``bench/tools/profile_round.py``
breaks a round down). These tests pin what the round computes (bit for bit) and how many full-size
buffers the cheap steps may allocate (counted by torch's profiler, not timed).
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from bench.api.defense import Transport, weighted_sum
from bench.api.errors import DivergedError
from bench.engine import federation as fl
from bench.engine.runner import plan, prepare
from bench.world import model_sources
from tests.helpers import make_scenario
from tests.test_real_model import gguf_source, write_tiny_gguf

SIZE = 1_000_000


def buffers_of_at_least(nbytes: int, work) -> int:
    """Tensors of at least ``nbytes`` that ``work()`` allocates (torch's CPU memory profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    return sum(1 for event in prof.events() if event.self_cpu_memory_usage >= nbytes)


def updates(count: int) -> list[torch.Tensor]:
    rng = torch.Generator().manual_seed(0)
    out = [torch.randn(SIZE, generator=rng) for _ in range(count)]
    for u in out:  # signed zeros: where the former sum(0 + ...) and a careless in-place sum would differ
        u[:1000] = -0.0
    return out


def test_the_aggregate_is_the_weighted_mean_the_plain_sum_gives_bit_for_bit():
    messages = dict(enumerate(updates(4)))
    weights = {0: 3.0, 1: 5.0, 2: 4.0, 3: 11.0}
    total = sum(weights.values())
    expected = sum(messages[c] * (weights[c] / total) for c in messages)  # the former Transport.aggregate
    got = Transport().aggregate(0, messages, weights)
    assert torch.equal(got, expected)
    assert torch.equal(torch.signbit(got), torch.signbit(expected))


def test_a_single_update_and_mixed_dtypes_give_what_sum_gives():
    (one,) = updates(1)
    assert torch.equal(torch.signbit(weighted_sum([one], [1.0])), torch.signbit(0 + one * 1.0))
    mixed = [one, one.double()]
    assert torch.equal(weighted_sum(mixed, [0.5, 0.5]), sum(t * 0.5 for t in mixed))


def test_aggregating_four_updates_allocates_two_update_sized_buffers():
    messages = dict(enumerate(updates(4)))
    weights = dict.fromkeys(messages, 1.0)
    assert buffers_of_at_least(SIZE, lambda: Transport().aggregate(0, messages, weights)) == 2  # was 8


def test_checking_a_finite_update_allocates_nothing_of_its_size():
    (update,) = updates(1)
    assert buffers_of_at_least(SIZE // 4, lambda: fl.check_finite(0, 1, "update", update)) == 0  # was 4


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_update_still_fails_the_run_with_its_count(bad):
    (update,) = updates(1)
    update[[5, 77]] = bad
    with pytest.raises(DivergedError, match=f"2 of {SIZE} values non-finite"):
        fl.check_finite(3, 1, "update", update)


def test_finite_values_whose_sum_overflows_are_finite():
    fl.check_finite(0, None, "aggregate", torch.full((8,), 3e38))


def test_a_batched_round_loads_the_broadcast_state_once_and_steps_by_the_aggregate(tmp_path):
    scenario = make_scenario(tmp_path, method="fft", federation={"clients": 4, "clients_per_round": 3})
    p = prepare(scenario, 0, plan(scenario))
    p.fed.keep = frozenset({"global_states", "aggregates"})
    loads: list[torch.Tensor] = []
    set_flat = p.fed.method.set_flat
    p.fed.method.set_flat = lambda flat: (loads.append(flat), set_flat(flat))[1]
    stats = fl.run(p.fed, p.transcript, p.truth)
    assert stats.batching.record()["batched_clients"] == 6  # the batched path ran
    rounds = p.transcript.rounds
    for record in rounds:  # each round's broadcast state was loaded into the model once (was: once per client)
        assert sum(torch.equal(flat, record.global_before) for flat in loads) == 1
    after_first = rounds[0].global_before + scenario.federation.server_lr * rounds[0].aggregate
    assert torch.equal(rounds[1].global_before, after_first)


def test_a_converted_gguf_models_metadata_reads_the_recorded_quantisation(tmp_path, monkeypatch):
    """Every run's row names the weights' quantisation; once converted, it comes from the conversion's
    record, not from parsing the GGUF file again (about 10% of a one-round SmolLM2 run)."""
    monkeypatch.setenv("TIERBENCH_CACHE", str(tmp_path / "cache"))
    source = gguf_source(write_tiny_gguf(tmp_path / "tiny.gguf"))
    source.path()  # converts, reading the file type from the GGUF once

    def parse(*args):
        raise AssertionError("the GGUF file was parsed again")

    monkeypatch.setattr(model_sources, "_file_type", parse)
    assert source.metadata()["weights"] == "dequantised from ALL_F32 to float32 (not the original checkpoint)"


def test_a_batched_group_drops_its_optimizer_state_before_building_the_clients_states(tmp_path, monkeypatch):
    """Adam's state is two copies of every client's trainable tensors: alive beside the clients' flat
    states, it set the peak memory of a SmolLM2 full fine-tuning round."""
    import gc

    from bench.client import batched

    def optimizers() -> int:
        return sum(isinstance(o, torch.optim.Optimizer) for o in gc.get_objects())

    before, alive = optimizers(), []
    real = batched.Trained
    monkeypatch.setattr(batched, "Trained", lambda *args: (alive.append(optimizers()), real(*args))[1])
    scenario = make_scenario(tmp_path, method="fft", federation={"optimizer": "adam", "rounds": 1})
    p = prepare(scenario, 0, plan(scenario))
    stats = fl.run(p.fed, p.transcript, p.truth)
    assert stats.batching.record()["batched_clients"] == 3
    assert alive == [before] * 3


def test_the_round_profile_breaks_a_run_into_nested_phases(tmp_path):
    from bench.tools import profile_round
    from tests.helpers import scenario_dict, write_scenario

    small = {"rounds": 1, "local_steps": 1, "examples_per_client": 8, "eval_examples": 8}
    path = write_scenario(tmp_path, scenario_dict(method="fft", attacks=["mia-loss"], federation=small))
    result = profile_round.profile_run(str(path), 0)
    phases = result["phases"]
    assert list(phases) == [label for label, _, _ in profile_round.PHASES]
    assert 0 < phases["local training"] <= phases["rounds"]
    assert 0 < phases["aggregation"] <= phases["server"] <= phases["rounds"]
    assert phases["attacks"] > 0 and phases["prepare"] > 0
    top = sum(phases[label] for label, depth, _ in profile_round.PHASES if depth == 0)
    assert top <= result["wall_s"]
    assert result["costs"]["cost.client_s"] > 0 and "mia-loss/mia.auc" in result["metrics"]
    assert "| rounds |" in profile_round.render(result)
