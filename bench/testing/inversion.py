"""A self-contained federated round for testing and measuring the inversion attacks.

Builds tiny GPT-2- or Llama-shaped decoders from configs (no tokenizer: token ids are the data),
trains one round of clients through the engine's own round loop (``bench.engine.federation.run``;
per-example mean token loss as ``bench.world.tasks.token_losses``), and returns the ``ThreatView`` a
server would get and the ``GroundTruth`` the scorer needs. Used by tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from bench.api.attack import Attack
from bench.api.handles import TaskSpec
from bench.api.method import Method
from bench.api.seeding import isolated_rng
from bench.api.transcript import GroundTruth, ThreatView, Transcript
from bench.engine import federation as fl
from bench.world.partition import ClientData
from bench.world.tiers import OpenModel

PAD, EOS = 0, 1
FIRST_ORDINARY_TOKEN = 2


@dataclass(frozen=True)
class TinyArch:
    family: str = "gpt2"  # "gpt2" | "llama"
    vocab: int = 2000
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    positions: int = 128


def tiny_decoder(arch: TinyArch, seed: int = 0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    builders = {
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(
            vocab_size=arch.vocab, n_embd=arch.hidden, n_layer=arch.layers, n_head=arch.heads,
            n_positions=arch.positions, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
        "llama": lambda: LlamaForCausalLM(LlamaConfig(
            vocab_size=arch.vocab, hidden_size=arch.hidden, intermediate_size=2 * arch.hidden,
            num_hidden_layers=arch.layers, num_attention_heads=arch.heads, num_key_value_heads=arch.heads,
            max_position_embeddings=arch.positions, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD,
            tie_word_embeddings=False)),
    }
    with isolated_rng(seed):
        model = builders[arch.family]()
    model.config.pad_token_id = PAD
    return model


class _AllTrainable(Method):
    """Full fine-tuning without the registry (keeps the harness independent of plugin loading)."""

    name = "fft"

    def build(self, model: torch.nn.Module, task: TaskSpec, rng: torch.Generator) -> torch.nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model


class _LoraOnly(Method):
    name = "lora"

    def build(self, model: torch.nn.Module, task: TaskSpec, rng: torch.Generator) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        targets = ["c_attn"] if model.config.model_type == "gpt2" else ["q_proj", "v_proj"]
        config = LoraConfig(r=self.config.rank, lora_alpha=2 * self.config.rank, lora_dropout=0.0,
                            target_modules=targets, fan_in_fan_out=model.config.model_type == "gpt2")
        with isolated_rng(0):
            wrapped = get_peft_model(model, config)
        if self.config.nonzero_b:  # a LoRA past its first round: B has moved away from zero
            with isolated_rng(1):
                for name, p in wrapped.named_parameters():
                    if "lora_B" in name:
                        torch.nn.init.normal_(p, std=0.02)
        return wrapped


def build_method(arch: TinyArch, lora_rank: int = 0, nonzero_b: bool = True, seed: int = 0) -> Method:
    return wrap_model(tiny_decoder(arch, seed), lora_rank, nonzero_b, seed)


def wrap_model(model: torch.nn.Module, lora_rank: int = 0, nonzero_b: bool = True, seed: int = 0) -> Method:
    """Full fine-tuning (``lora_rank`` 0) or LoRA on the attention of any causal LM, e.g. a zoo model."""
    method = _LoraOnly(SimpleNamespace(rank=lora_rank, nonzero_b=nonzero_b)) if lora_rank else _AllTrainable(None)
    method.prepare(model, SimpleNamespace(kind="language"), torch.Generator().manual_seed(seed))
    method.task_loss = lm_example_losses
    return method


def random_sequences(count: int, length: int, vocab: int, rng: torch.Generator) -> list[list[int]]:
    return torch.randint(FIRST_ORDINARY_TOKEN, vocab, (count, length), generator=rng).tolist()


def collate(sequences: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), PAD)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def lm_example_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-example mean next-token loss (as ``bench.world.tasks.token_losses``)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted, targets = logits[:, :-1].float(), batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(shifted.transpose(1, 2), targets, reduction="none", ignore_index=-100)
    return nll.sum(1) / (targets != -100).sum(1).clamp(min=1)


def run_round(
    method: Method,
    client_data: dict[int, list[list[int]]],
    protocol: str = "fedsgd",
    lr: float = 1e-3,
    local_steps: int = 1,
    batch_size: int | None = None,
    seed: int = 0,
) -> tuple[ThreatView, GroundTruth]:
    """One round of the engine's own loop (``bench.engine.federation.run``), every client sampled, plain
    transport, SGD; returns the server's view (updates, broadcast state, aggregate) and the batches."""
    clients = sorted(client_data)
    assert clients == list(range(len(clients))), "clients are numbered 0..n-1, as the engine numbers them"
    settings = SimpleNamespace(rounds=1, clients=len(clients), clients_per_round=len(clients), protocol=protocol,
                               local_steps=local_steps, batch_size=batch_size or max(len(v) for v in client_data.values()),
                               lr=lr, optimizer="sgd", server_lr=1.0, client_batch="auto")
    fed = fl.Federation(method=method, model=method.model, collate=collate, settings=settings, seed_parts=(seed,),
                        clients=[ClientData(members=client_data[c], nonmembers=[]) for c in clients],
                        keep=frozenset({"client_updates", "global_states", "client_batches", "aggregates"}))
    transcript, truth = Transcript(), GroundTruth()
    global_state = method.get_flat()
    fl.run(fed, transcript, truth)
    method.set_flat(global_state)  # the view's model is the one the server broadcast, as before the round
    layout = method.layout()
    view = ThreatView(vantage="server", rounds=transcript.rounds, candidates=[], layout=layout,
                      final_model=OpenModel(method.model, layout, SimpleNamespace(kind="language"), None),
                      base_model=None, tokenizer=None, federation=settings)
    return view, truth


def measure(arch: TinyArch, batch: int, length: int, attack: Attack, protocol: str = "fedsgd", lr: float = 1e-3,
            local_steps: int = 5, lora_rank: int = 0, seed: int = 0) -> dict[str, float]:
    """One point of a strength curve: a round on random sequences, the attack, its metrics and time."""
    import time

    from bench.scoring.score import score

    method = build_method(arch, lora_rank=lora_rank, seed=seed)
    data = {0: random_sequences(batch, length, arch.vocab, torch.Generator().manual_seed(seed + 1))}
    view, truth = run_round(method, data, protocol=protocol, lr=lr, local_steps=local_steps)
    started = time.perf_counter()
    prediction = attack.run(view, torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - started
    values = {m.name: m.value for m in score(prediction, truth)}
    return {**values, "seconds": seconds, "recovered": float(sum(len(s) for s in prediction.sequences.values()))}
