"""dp-local step time against non-private local training on tiny Llamas of 1.3M and 3.4M parameters.

For sequence lengths 64 and 256, full fine-tuning and LoRA, and each Opacus per-sample-gradient
mode (all three work on Llama, whose embeddings are untied), one benchmark round is one
client job of ``STEPS`` steps on a fixed full batch (sampling rate 1, so the private and the plain
trainer see the same examples). The non-private time is measured in the same test, interleaved
with the private rounds, and the ratio is stored in ``extra_info`` (target: <= 1.5x).
Run: ``OMP_NUM_THREADS=1 pytest tests/benchmarks/test_bench_dp.py -m perf``.
"""

from __future__ import annotations

import statistics
import time

import peft
import pytest
import torch
import transformers

from bench.client.training import LocalJob, train_local
from defenses.dp.local import DPLocal

VOCAB, MAX_LENGTH, BATCH, STEPS, ROUNDS = 2000, 256, 8, 3, 5
# (hidden, intermediate, layers): the zoo's width (1.3M parameters) and the issue's ~3M-parameter size.
SIZES = {"1.3M": (128, 344, 4), "3.4M": (192, 512, 6)}


def tiny_llama(method: str, size: str = "1.3M") -> torch.nn.Module:
    hidden, intermediate, layers = SIZES[size]
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_LENGTH,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
        if method == "lora":
            model = peft.get_peft_model(
                model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
            )
    return model


def losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
    token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), batch["input_ids"][:, 1:].reshape(-1), reduction="none"
    )
    return token.view(len(logits), -1).mean(1)


def job_for(model: torch.nn.Module, examples: list[torch.Tensor]) -> LocalJob:
    return LocalJob(
        model=model,
        parameters=[p for p in model.parameters() if p.requires_grad],
        examples=examples,
        collate=lambda items: {"input_ids": torch.stack(items)},
        example_losses=losses,
        steps=STEPS,
        batch_size=len(examples),
        lr=1e-3,
        optimizer="adamw",
        rng=torch.Generator().manual_seed(0),
    )


@pytest.mark.perf
@pytest.mark.parametrize("mode", ["hooks", "ghost", "functorch"])
@pytest.mark.parametrize("method", ["fft", "lora"])
@pytest.mark.parametrize("length", [64, 256])
@pytest.mark.parametrize("size", list(SIZES))
def test_dp_local_step_time_vs_non_private(benchmark, size, length, method, mode):
    model = tiny_llama(method, size)
    examples = list(torch.randint(0, VOCAB, (BATCH, length), generator=torch.Generator().manual_seed(1)))
    defense = DPLocal(DPLocal.Config(noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode))
    private = defense.wrap_training(train_local, 0, torch.Generator().manual_seed(2))
    plain_seconds: list[float] = []

    def private_round() -> None:
        started = time.perf_counter()  # the plain job runs first, outside the benchmark's clock
        train_local(job_for(model, examples))
        plain_seconds.append(time.perf_counter() - started)

    def run_private() -> None:
        private(job_for(model, examples))

    private(job_for(model, examples))  # warm-up: attaches the hooks once, as the first round would
    benchmark.pedantic(run_private, setup=private_round, rounds=ROUNDS, iterations=1)
    ratio = benchmark.stats.stats.median / statistics.median(plain_seconds)
    benchmark.extra_info.update(
        ratio_vs_nonprivate=round(ratio, 3),
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        steps_per_round=STEPS,
        batch=BATCH,
        length=length,
    )
    print(f"\n{size} T={length} {method}/{mode}: private/non-private step time = {ratio:.2f}x")
    assert ratio < 6.0, "per-sample gradients should cost a small multiple of a plain step"
