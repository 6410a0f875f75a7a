"""Local training on one client: the default trainer, and the job it receives.

A ``LocalJob`` is everything a client needs to train: the (shared, in-process) model with the
method's trainable parameters, the client's examples, how to batch them and the per-example loss.
``Defense.wrap_training`` may replace the trainer (record-level DP-SGD does).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.api.seeding import derive_seed, isolated_rng
from bench.api.vocabulary import Record
from bench.client.device import autocast

Trainer = Callable[["LocalJob"], dict[str, float]]


@dataclass
class LocalJob:
    model: nn.Module
    parameters: list[nn.Parameter]
    examples: list[Record]
    collate: Callable[[list[Record]], dict[str, torch.Tensor]]
    """Turns examples into a batch of tensors already on the model's device."""
    example_losses: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    """Per-example losses, shape (batch,); the trainer averages them."""
    steps: int
    batch_size: int
    lr: float
    optimizer: str
    rng: torch.Generator
    report_step: bool = False
    """FedSGD: a one-step plain SGD trainer fills ``step_update`` (skipped otherwise: it is a copy of
    every trainable parameter)."""
    step_update: torch.Tensor | None = None
    """Filled by a trainer whose whole job is one plain SGD step: -lr x the gradient it applied, flat
    in ``parameters`` order. FedSGD transmits this (the gradient) rather than the weight difference,
    whose float32 rounding at the weights' ulp would swamp the gradient's weakest directions."""
    seen: list[list[int]] = field(default_factory=list)
    """Filled by the trainer: indices of the examples in each step's batch (ground truth)."""
    client: int | None = None
    """Which client trains (methods that send data to a provider log it under this id)."""


def make_optimizer(name: str, parameters: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    factories = {
        "sgd": lambda: torch.optim.SGD(parameters, lr=lr),
        "adam": lambda: torch.optim.Adam(parameters, lr=lr),
        "adamw": lambda: torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0),
    }
    return factories[name]()


def batch_indices(job: LocalJob) -> list[list[int]]:
    """Indices for each local step: shuffled epochs over the client's examples, from ``job.rng``."""
    n = len(job.examples)
    size = min(job.batch_size, n)
    order: list[int] = []
    batches = []
    for _ in range(job.steps):
        if len(order) < size:
            order += torch.randperm(n, generator=job.rng).tolist()
        batches.append(order[:size])
        order = order[size:]
    return batches


def job_rng(job: LocalJob) -> AbstractContextManager[None]:
    """A context in which torch's global generators (CPU and every CUDA device) are seeded from the
    job, and restored afterwards.

    Hugging Face models draw dropout masks from the global generator, which nothing in a run seeds;
    without this, a model whose dropout is > 0 trains differently on every rerun of the same seed. The
    seed comes from ``job.rng``'s own seed (read, not drawn, so batch order stays as it was), which the
    round loop derives from (run, round, client) and shadow training from its own seed. The fork
    restores the global state afterwards, so a run neither depends on nor changes it."""
    return isolated_rng(derive_seed(job.rng.initial_seed(), "global-rng"))


def train_local(job: LocalJob) -> dict[str, float]:
    """Plain local training: ``job.steps`` optimizer steps on mini-batches; returns the mean loss."""
    with job_rng(job):
        return _train_local(job)


def _train_local(job: LocalJob) -> dict[str, float]:
    job.model.train()
    optimizer = make_optimizer(job.optimizer, job.parameters, job.lr)
    # The loss is summed where it is computed: reading it every step (float(loss)) would make the CPU wait for
    # the GPU each step, and a small model's steps are bound by kernel launches (on an H200, 0.44 of a plain
    # loop's tokens/s with a read per step). Summed in float64, as the Python float sum it replaces.
    total = torch.zeros((), dtype=torch.float64, device=next(job.model.parameters()).device)
    for indices in batch_indices(job):
        job.seen.append(indices)
        batch = job.collate([job.examples[i] for i in indices])
        optimizer.zero_grad(set_to_none=True)
        with autocast(next(job.model.parameters()).device):  # bf16 on CUDA where supported; no-op on CPU
            loss = job.example_losses(job.model, batch).mean()
        loss.backward()
        if job.report_step and job.steps == 1 and job.optimizer == "sgd":
            job.step_update = -job.lr * _flat_gradient(job.parameters)
        optimizer.step()
        total += loss.detach().double()
    return {"loss": float(total) / max(job.steps, 1)}


def _flat_gradient(parameters: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).float()
                      for p in parameters])
