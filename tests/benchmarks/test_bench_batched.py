"""Round time with a round's clients trained together (``client_batch: auto``) against one after another
(``client_batch: 1``): LoRA and full fine-tuning on tiny-llama, 8 clients x 10 local steps, one round.

One file, one group (``batched-vs-sequential``), so a single run prints all four side by side. The
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
MEANS: dict[str, float] = {}
"""Sequential means by method, read by the batched benchmark of the same method (which runs after it)."""


@pytest.mark.perf
@pytest.mark.benchmark(group="batched-vs-sequential")
@pytest.mark.parametrize(("method", "client_batch"), [("lora", 1), ("lora", "auto"), ("fft", 1), ("fft", "auto")],
                         ids=["lora-sequential", "lora-batched", "fft-sequential", "fft-batched"])
def test_round_time(benchmark, tmp_path, method, client_batch):
    scenario = make_scenario(tmp_path, model="tiny-llama", method=method, task=TASK,
                             federation={**SETTINGS, "client_batch": client_batch})

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
