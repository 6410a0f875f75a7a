"""Round time with a round's clients trained together (``client_batch: auto``) against one after another
(``client_batch: 1``): LoRA and full fine-tuning on tiny-llama, 8 clients x 10 local steps, one round;
RLHF as ``scenarios/table4-poisoning-rlhf.yaml`` trains it (tiny-gpt2, likelihood reward model, Adam,
batches of 4 pairs), 8 clients x 10 local steps, two rounds: one of the reward model, one of DPO;
and LoRA under dp-local (record-level DP-SGD, noise multiplier 1, ``grad_sample_mode: auto``): sequential
is Opacus one client at a time (its fastest right mode), batched is ``bench.client.private_group``.

One file, one group (``batched-vs-sequential``), so a single run prints all of them side by side. The
batched benchmark of each method records its ratio to the sequential one in ``extra_info``
(``batched_over_sequential``, goal at most 0.35 on 2 CPU cores); ``bench/tools/check_perf.py`` reads the
``--benchmark-json`` file and fails when a ratio misses its goal. Nothing here asserts a time.
"""

from __future__ import annotations

import pytest

from bench.engine import federation as fl
from bench.engine.runner import plan, prepare
from tests.helpers import make_scenario

SETTINGS = {"clients": 8, "clients_per_round": 8, "rounds": 1, "local_steps": 10, "batch_size": 8,
            "examples_per_client": 32, "lr": 0.003}
TASK = {"name": "synthetic-instructions", "params": {"max_length": 64}}
SCENARIOS = {
    "lora": {"model": "tiny-llama", "method": "lora", "task": TASK, "federation": SETTINGS},
    "fft": {"model": "tiny-llama", "method": "fft", "task": TASK, "federation": SETTINGS},
    "dp-lora": {"model": "tiny-llama", "method": "lora", "task": TASK, "federation": SETTINGS,
                "defenses": [{"name": "dp-local", "params": {"noise_multiplier": 1.0}}]},
    "rlhf": {"model": "tiny-gpt2", "method": {"name": "rlhf", "params": {"reward_model": "likelihood", "reward_rounds": 1}},
             "task": {"name": "synthetic-preferences", "params": {"max_length": 48}},
             "federation": {**SETTINGS, "rounds": 2, "batch_size": 4, "optimizer": "adam"}},
}
MEANS: dict[str, float] = {}
"""Sequential means by method, read by the batched benchmark of the same method (which runs after it)."""


@pytest.mark.perf
@pytest.mark.benchmark(group="batched-vs-sequential")
@pytest.mark.parametrize(("method", "client_batch"), [(m, b) for m in SCENARIOS for b in (1, "auto")],
                         ids=[f"{m}-{k}" for m in SCENARIOS for k in ("sequential", "batched")])
def test_round_time(benchmark, tmp_path, method, client_batch):
    settings = SCENARIOS[method]
    scenario = make_scenario(tmp_path, **{**settings, "federation": {**settings["federation"], "client_batch": client_batch}})

    def setup():
        prepared = prepare(scenario, 0, plan(scenario))
        return (prepared,), {}

    stats = benchmark.pedantic(lambda p: fl.run(p.fed, p.transcript, p.truth), setup=setup, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(method=method, client_batch=client_batch, batching=stats.batching.record())
    mean = _mean(benchmark)
    if client_batch == 1:
        MEANS[method] = mean
    elif mean is not None and MEANS.get(method):
        benchmark.extra_info["batched_over_sequential"] = mean / MEANS[method]


def _mean(benchmark) -> float | None:
    """The benchmark's mean seconds, or None when timing is off (``--benchmark-disable``)."""
    stats = getattr(benchmark, "stats", None)
    return getattr(getattr(stats, "stats", None), "mean", None)
