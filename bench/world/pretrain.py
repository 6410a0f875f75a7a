"""Deterministic local pretraining of a zoo model on its generated corpus (packed sequences)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import PreTrainedTokenizerBase

    from bench.world.models import ZooConfig


def pack(corpus: list[str], tokenizer: PreTrainedTokenizerBase, length: int) -> torch.Tensor:
    ids: list[int] = []
    for doc in corpus:
        ids.extend(tokenizer(doc).input_ids + [tokenizer.eos_token_id])
    usable = len(ids) // length * length
    return torch.tensor(ids[:usable]).view(-1, length)


def pretrain(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, corpus: list[str], config: ZooConfig, label: str = "pretraining"
             ) -> list[float]:
    from tqdm import tqdm

    sequences = pack(corpus, tokenizer, min(64, config.context))
    rng = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.pretrain_lr, weight_decay=0.01)
    warmup = max(config.pretrain_steps // 10, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / config.pretrain_steps))))
    model.train()
    losses = []
    # A bar on a terminal (minutes on a small CPU): the first run must not look hung.
    for _ in tqdm(range(config.pretrain_steps), desc=label, leave=False, disable=None, position=2):
        batch = sequences[torch.randint(len(sequences), (config.pretrain_batch,), generator=rng)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses
