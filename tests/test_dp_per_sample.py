"""Per-sample gradients through Opacus hooks (``defenses/dp/hooks.py``) against batch-of-one
autograd: tiny GPT-2 and Llama, full fine-tuning and LoRA, every mode, and the traps (GPT-2 positions,
tied embeddings under ghost clipping, peft's saved heads, paired sequences, layers off the
activation-only backward path)."""

from __future__ import annotations

import peft
import pytest
import torch
import transformers
from dp_helpers import (
    VOCAB,
    batch_of_one_gradients,
    collate,
    dp_local,
    example_losses,
    flat,
    make_examples,
    make_job,
    tiny_model,
)

from bench.client.training import LocalJob, train_local
from defenses.dp.hooks import expanded_position_ids, per_sample_gradients, per_sample_norms
from defenses.dp.sgd import probe_modes, resolve_mode

ARCH_METHOD = [("gpt2", "fft"), ("gpt2", "lora"), ("llama", "fft"), ("llama", "lora")]


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
@pytest.mark.parametrize("arch,method", ARCH_METHOD)
def test_per_sample_gradients_equal_batch_of_one(arch, method, mode):
    job = make_job(tiny_model(arch, method), make_examples(3, seed=0))
    per_sample = per_sample_gradients(job, job.collate(job.examples), mode)
    expected = batch_of_one_gradients(job, job.examples)
    assert len(per_sample) == len(job.parameters) > 0
    for i in range(3):
        for got, want in zip(per_sample, expected[i], strict=True):
            torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-6)


def reversed_pair_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A DPO-like example: two sequences per example (the tokens and their reversal)."""
    flipped = {k: v.flip(1) for k, v in batch.items()}
    return example_losses(model, batch) + example_losses(model, flipped)


def test_paired_sequences_need_separate_forwards_to_stay_one_privacy_unit():
    equal_length = [{"tokens": e["tokens"][:5]} for e in make_examples(3, seed=2)]  # flipping keeps no padding
    job = make_job(tiny_model("gpt2", "fft"), equal_length, losses=reversed_pair_losses)
    per_sample = per_sample_gradients(job, job.collate(job.examples), "hooks")
    for i, expected in enumerate(batch_of_one_gradients(job, job.examples)):
        for got, want in zip(per_sample, expected, strict=True):
            torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-6)

    def packed(model, batch):  # both sequences in one forward: 2 rows per example
        both = {k: torch.cat([v, v.flip(1)]) for k, v in batch.items()}
        return example_losses(model, both).view(2, -1).sum(0)

    packed_job = make_job(tiny_model("gpt2", "fft"), equal_length, losses=packed)
    with pytest.raises(RuntimeError, match="one row per example"):
        per_sample_gradients(packed_job, packed_job.collate(packed_job.examples), "hooks")


@pytest.mark.parametrize("arch,method", [("gpt2", "lora"), ("llama", "fft"), ("llama", "lora")])
def test_ghost_clipping_norms_equal_batch_of_one(arch, method):
    job = make_job(tiny_model(arch, method), make_examples(3, seed=0))
    norms = per_sample_norms(job, job.collate(job.examples), "ghost")
    expected = torch.stack(
        [torch.cat([g.reshape(-1) for g in gs]).norm() for gs in batch_of_one_gradients(job, job.examples)]
    )
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=1e-6)


def test_ghost_clipping_rejects_tied_gpt2_embeddings_and_auto_falls_back():
    job = make_job(tiny_model("gpt2", "fft"), make_examples(6, seed=0))
    with pytest.raises(NotImplementedError, match="tying"):
        per_sample_norms(job, job.collate(job.examples[:2]), "ghost")
    timings = probe_modes(job, max_grad_norm=1.0)
    assert "tying" in timings["ghost"] and isinstance(timings["hooks"], float)
    assert resolve_mode(job, "auto", 1.0) in ("hooks", "functorch")
    assert all(p.grad is None for p in job.parameters), "the probe must leave no gradients behind"


def test_lora_classifier_with_a_saved_head_gets_per_sample_gradients_and_trains():
    """peft wraps a trainable head in ``ModulesToSaveWrapper``, which forwards attribute reads."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        config = transformers.GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=16,
            num_labels=3,
            pad_token_id=0,
            resid_pdrop=0,
            embd_pdrop=0,
            attn_pdrop=0,
        )
        lora = peft.LoraConfig(
            r=2, lora_alpha=4, target_modules=["c_attn"], modules_to_save=["score"], fan_in_fan_out=True
        )
        model = peft.get_peft_model(transformers.GPT2ForSequenceClassification(config), lora)
    examples = [dict(e, label=i % 3) for i, e in enumerate(make_examples(6, seed=8))]

    def classify(examples: list[dict]) -> dict[str, torch.Tensor]:
        return dict(collate(examples), labels=torch.tensor([e["label"] for e in examples]))

    def class_losses(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")

    job = LocalJob(
        model=model,
        parameters=[p for p in model.parameters() if p.requires_grad],
        examples=examples,
        collate=classify,
        example_losses=class_losses,
        steps=2,
        batch_size=3,
        lr=0.05,
        optimizer="sgd",
        rng=torch.Generator().manual_seed(0),
    )
    per_sample = per_sample_gradients(job, classify(examples[:3]), "hooks")
    for i, expected in enumerate(batch_of_one_gradients(job, examples[:3])):
        for got, want in zip(per_sample, expected, strict=True):
            torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-6)
    before = flat(model)
    dp_local(noise_multiplier=0.5, grad_sample_mode="auto").wrap_training(train_local, 0, torch.Generator())(job)
    assert not torch.equal(before, flat(model))


class TwoBranches(torch.nn.Module):
    """Branch ``b`` reads an input that requires grad but comes from no trainable layer (as after
    ``enable_input_require_grads``), so activation-only backward would leave it out."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.a(x) + self.b(x.clone().requires_grad_())).squeeze(-1)


def test_trainable_layers_off_the_activation_path_fall_back_to_full_backward():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TwoBranches()
    g = torch.Generator().manual_seed(0)
    examples = [{"x": torch.randn(4, generator=g), "y": float(i % 2)} for i in range(4)]
    job = LocalJob(
        model=model,
        parameters=list(model.parameters()),
        examples=examples,
        collate=lambda es: {"x": torch.stack([e["x"] for e in es]), "y": torch.tensor([e["y"] for e in es])},
        example_losses=lambda m, b: (m(b["x"]) - b["y"]) ** 2,
        steps=1,
        batch_size=4,
        lr=0.1,
        optimizer="sgd",
        rng=torch.Generator().manual_seed(1),
    )
    for mode in ("hooks", "ghost"):
        expected = batch_of_one_gradients(job, examples)
        norms = per_sample_norms(job, job.collate(examples), mode)
        torch.testing.assert_close(
            norms, torch.stack([torch.cat([g.reshape(-1) for g in gs]).norm() for gs in expected])
        )
    per_sample = per_sample_gradients(job, job.collate(examples), "hooks")
    for i in range(4):
        for got, want in zip(per_sample, expected[i], strict=True):
            torch.testing.assert_close(got[i], want)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_expanded_position_ids_leave_outputs_unchanged_and_are_needed():
    model = tiny_model("gpt2", "fft").train()
    batch = collate(make_examples(3, seed=0))
    plain = model(input_ids=batch["input_ids"]).logits
    with expanded_position_ids(model):
        expanded = model(input_ids=batch["input_ids"]).logits
    assert torch.equal(plain, expanded)
    from opacus.grad_sample import GradSampleHooks  # without them, wpe's per-sample grads lose the batch

    hooks = GradSampleHooks(model, loss_reduction="sum")
    example_losses(model, batch).sum().backward()
    assert model.transformer.wpe.weight.grad_sample.shape[0] != 3
    hooks.cleanup()
