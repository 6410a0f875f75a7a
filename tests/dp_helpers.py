"""Tiny models (GPT-2, Llama; full fine-tuning or LoRA), synthetic token examples and local jobs
shared by the DP tests (``test_dp*.py``)."""

from __future__ import annotations

from types import SimpleNamespace

import peft
import torch
import transformers

from bench.api.config import bind
from bench.client.training import LocalJob
from defenses.dp.local import DPLocal

VOCAB = 40


def tiny_model(arch: str, method: str, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # HF initialises from the global generator; fork keeps it untouched
        if arch == "gpt2":
            config = transformers.GPT2Config(
                vocab_size=VOCAB,
                n_embd=32,
                n_layer=2,
                n_head=2,
                n_positions=16,
                bos_token_id=0,
                eos_token_id=1,
                resid_pdrop=0,
                embd_pdrop=0,
                attn_pdrop=0,
            )
            model, targets = transformers.GPT2LMHeadModel(config), ["c_attn", "c_fc"]
        else:
            config = transformers.LlamaConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                max_position_embeddings=16,
            )
            model, targets = transformers.LlamaForCausalLM(config), ["q_proj", "v_proj", "down_proj"]
        if method == "lora":
            lora = peft.LoraConfig(
                r=2, lora_alpha=4, lora_dropout=0.0, target_modules=targets, fan_in_fan_out=arch == "gpt2"
            )
            model = peft.get_peft_model(model, lora)
            for name, p in model.named_parameters():
                if "lora_B" in name:  # B starts at zero, which would make every lora_A gradient zero
                    torch.nn.init.normal_(p, std=0.1)
    return model


def make_examples(n: int, seed: int, low: int = 2, high: int = VOCAB) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 11, (n,), generator=g).tolist()
    return [{"tokens": torch.randint(low, high, (length,), generator=g).tolist()} for length in lengths]


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    width = max(len(e["tokens"]) for e in examples)
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    mask = torch.zeros(len(examples), width, dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : len(example["tokens"])] = torch.tensor(example["tokens"])
        mask[row, : len(example["tokens"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def example_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    token = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), reduction="none")
    token = token.view(labels.shape)
    valid = (labels != -100).float()
    return (token * valid).sum(1) / valid.sum(1)


def make_job(
    model: torch.nn.Module,
    examples: list[dict],
    *,
    steps: int = 2,
    batch_size: int = 4,
    lr: float = 0.05,
    optimizer: str = "sgd",
    seed: int = 1,
    losses=example_losses,
) -> LocalJob:
    return LocalJob(
        model=model,
        parameters=[p for p in model.parameters() if p.requires_grad],
        examples=examples,
        collate=collate,
        example_losses=losses,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        rng=torch.Generator().manual_seed(seed),
    )


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def dp_local(**params) -> DPLocal:
    return DPLocal(bind(DPLocal.Config, {"grad_sample_mode": "hooks", **params}, file=None, key="dp-local"))


def plan(rounds=2, local_steps=3, clients=2, clients_per_round=2, batch_size=4, protocol="fedavg") -> SimpleNamespace:
    """A stand-in for the scenario a defense is set up with (``bench.api.transcript.PlannedScenario``): every
    field of ``FederationSettings``, as the schema always fills them (``protocol`` defaults to fedavg there)."""
    return SimpleNamespace(
        federation=SimpleNamespace(
            rounds=rounds,
            local_steps=local_steps,
            clients=clients,
            clients_per_round=clients_per_round,
            batch_size=batch_size,
            lr=1e-3,
            protocol=protocol,
        )
    )


def batch_of_one_gradients(job: LocalJob, examples: list[dict]) -> list[list[torch.Tensor]]:
    out = []
    for example in examples:
        loss = job.example_losses(job.model, job.collate([example])).sum()
        out.append([g.detach() for g in torch.autograd.grad(loss, job.parameters)])
    return out
