"""Evaluation costs a run pays after (and, with a learning curve, during) training, before and after
session 14's changes, side by side in one group (``evaluation``):

- greedy generation of 16 instruction prompts x 24 tokens (``utility.py``'s instruction evaluation, the
  backdoor and extraction attacks, the black-box textual prompt's rewards) on tiny-gpt2 with LoRA: a
  prompt at a time (``OpenModel.generate_one_by_one``, how every generation ran before) against 16
  left-padded prompts per ``generate`` call (``OpenModel.generate``);
- RLHF's learning curve in its reward phase: the evaluation of the 128 held-out pairs after a reward
  round, scored from scratch (``fresh``: what every round cost before) against the memoised
  ``Rlhf.extra_utility``, which rescores only the reward model, whose weights moved.

Each "after" benchmark records its ratio to its "before" in ``extra_info`` (``after_over_before``).
Nothing here asserts a time.
"""

from __future__ import annotations

import pytest
import torch

from bench.api.vocabulary import PROMPT_TEMPLATE
from bench.engine.runner import plan, prepare
from bench.world.tiers import OpenModel
from tests.helpers import make_scenario

MEANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def lora_instructions(tmp_path_factory):
    scenario = make_scenario(tmp_path_factory.mktemp("gen"), model="tiny-gpt2", method="lora",
                             task={"name": "synthetic-instructions", "params": {"max_length": 48}},
                             federation={"clients": 2, "clients_per_round": 2, "rounds": 1, "examples_per_client": 8,
                                         "eval_examples": 16})
    p = prepare(scenario, 0, plan(scenario))
    handle = OpenModel(p.built.method.model, None, p.built.task, p.tokenizer)
    return handle, [PROMPT_TEMPLATE.format(instruction=e["instruction"]) for e in p.task_data.test[:16]]


@pytest.fixture(scope="module")
def rlhf_reward_phase(tmp_path_factory):
    scenario = make_scenario(tmp_path_factory.mktemp("rlhf"), model="tiny-gpt2",
                             method={"name": "rlhf", "params": {"reward_model": "likelihood", "reward_rounds": 8}},
                             task={"name": "synthetic-preferences", "params": {"max_length": 48}},
                             federation={"clients": 2, "clients_per_round": 2, "rounds": 10, "examples_per_client": 260,
                                         "eval_examples": 128})
    p = prepare(scenario, 0, plan(scenario))
    p.built.method.on_round_start(0, 10)
    return p


def _record(benchmark, name: str, before: str | None) -> None:
    mean = getattr(getattr(getattr(benchmark, "stats", None), "stats", None), "mean", None)
    if mean is None:
        return
    MEANS[name] = mean
    if before is not None and MEANS.get(before):
        benchmark.extra_info["after_over_before"] = mean / MEANS[before]


@pytest.mark.perf
@pytest.mark.benchmark(group="evaluation")
@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "batched"])
def test_generation(benchmark, lora_instructions, batched):
    handle, prompts = lora_instructions
    generate = handle.generate if batched else handle.generate_one_by_one
    benchmark.pedantic(lambda: generate(prompts, 24), rounds=3, warmup_rounds=1)
    _record(benchmark, f"generation-{batched}", "generation-False" if batched else None)


@pytest.mark.perf
@pytest.mark.benchmark(group="evaluation")
@pytest.mark.parametrize("memoised", [False, True], ids=["fresh", "memoised"])
def test_rlhf_curve_point_in_the_reward_phase(benchmark, rlhf_reward_phase, memoised):
    p = rlhf_reward_phase
    method, test = p.built.method, p.task_data.test[:128]
    handle = OpenModel(method.model, None, p.built.task, p.tokenizer)
    reward = [q for n, q in method.model.named_parameters() if n in method._reward_names and "lora_B" in n]

    def setup():
        with torch.no_grad():  # a reward round moved the reward model: its scores must be redone
            for q in reward:
                q.add_(0.01)
        if not memoised:
            method._scores._kept.clear()
        return (), {}

    benchmark.pedantic(lambda: method.extra_utility(handle, p.built.task, test), setup=setup, rounds=3, warmup_rounds=1)
    _record(benchmark, f"rlhf-{memoised}", "rlhf-False" if memoised else None)
