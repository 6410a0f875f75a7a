"""Batched local training: a round's sampled clients trained together as one computation.

All clients of a round start from the same global state and differ only in their trainable tensors
and their batches. Here each trainable tensor is stacked along a leading client dimension (a leaf
tensor of shape ``(clients, *shape)``) and one forward/backward pass runs every client's step:
``torch.func.vmap`` over ``torch.func.functional_call``, the frozen base shared (unbatched), so the
base's matmuls see all clients' tokens at once and LoRA/adapter/prompt tensors become batched matmuls.

Why this equals training the clients one after another:
- batches: each client's step indices come from ``bench.client.training.batch_indices`` on its own
  ``job.rng``, exactly as the sequential trainer draws them (and the rng ends in the same state);
- gradients: the clients' losses are summed; no tensor is shared between clients' trainable states,
  so d(sum)/d(client k's tensors) is client k's own gradient;
- optimizer state: SGD, Adam and AdamW are elementwise and every client takes the same number of
  steps, so one optimizer over the stacked tensors is each client's own optimizer, side by side;
- padding: clients' batches are right-padded to one length (pad token, attention mask 0, label
  -100); causal attention and the task losses never read a padded position.
What differs is the floating-point order of the batched kernels: updates agree with sequential
training to about 1e-6 relative (tests/test_batched.py asserts rtol 1e-4, atol 1e-6), not bit for bit.

Where it cannot apply, the round trains sequentially and the reason is counted in
``Batching.reasons`` (the run's ``train_batching`` provenance): ``client_batch`` 1, a method not
declared ``batchable`` (or one whose settings refuse: ``Method.batching_problem``), a trainer replaced by
the method, a defense that replaces it without stating it as data (``Defense.batching_problem``; dp-local
with an explicit Opacus mode), dropout > 0 (vmap cannot reproduce each client's dropout stream), clients
whose batch sizes differ (grouped by size; a group of one trains alone), a client the defense keeps alone
(dp-local's audited client), or a model whose forward vmap refuses (found at the first step, then not
tried again in the run).

Record-level DP-SGD (dp-local under ``grad_sample_mode: auto``) trains its groups through
``bench.client.private_group``: the same Poisson batches, clipping and noise draws per client, with every
client's per-example gradients in one vmapped pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from bench.api.private_steps import PrivateSteps
from bench.api.vocabulary import JsonObject
from bench.client.private_group import train_private_group
from bench.client.training import LocalJob, Trainer, batch_indices, make_optimizer, train_local
from bench.client.vmapped import Bound, Trained, Unbatchable, copied, stack_batches, stacked_copies, vmapped_call

if TYPE_CHECKING:  # named in annotations only
    from bench.api.defense import Defense
    from bench.api.method import Method


class BatchingSettings(Protocol):
    @property
    def client_batch(self) -> int | str: ...


class RoundFederation(Protocol):
    """What batching reads of the running federation (``bench.engine.federation.Federation`` has it; the
    engine sits above this layer)."""

    @property
    def method(self) -> Method: ...
    @property
    def settings(self) -> BatchingSettings: ...
    @property
    def defenses(self) -> Sequence[Defense]: ...
    @property
    def trainer(self) -> Trainer: ...

CPU_CAP = 16
"""Most clients per group on CPU under ``auto``: beyond this the kernels are already large and the
stacked Adam state of a full fine-tuning grows for nothing."""
CUDA_CAP = 256
MEMORY_SHARE = 0.5
"""Share of measured free memory ``auto`` lets one group use (the rest: fragmentation, evaluation)."""


@dataclass
class Batching:
    """How a run's local training was executed (kept in the run's provenance as ``train_batching``)."""

    batched_clients: int = 0
    sequential_clients: int = 0
    groups: int = 0
    largest_group: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    """Why clients trained sequentially -> how many client trainings did, for that reason."""
    refused: str | None = None
    """Set when the model's forward failed under vmap: the run stops trying."""

    def sequential(self, reason: str, clients: int) -> None:
        self.sequential_clients += clients
        self.reasons[reason] = self.reasons.get(reason, 0) + clients

    def record(self) -> JsonObject:
        return {"batched_clients": self.batched_clients, "sequential_clients": self.sequential_clients,
                "groups": self.groups, "largest_group": self.largest_group, "reasons": dict(self.reasons)}


# --- may a round batch at all ------------------------------------------------------------------------
def refusal(fed: RoundFederation, batching: Batching) -> str | None:
    """Why this federation's rounds train sequentially (decided without side effects), or None."""
    if fed.settings.client_batch == 1:
        return "client_batch is 1"
    if batching.refused:
        return batching.refused
    problem = fed.method.batching_problem()
    if problem:
        return problem
    if fed.trainer is not train_local:
        return f"method {fed.method.name} replaces the local trainer"
    problems = [problem for problem in (d.batching_problem() for d in fed.defenses) if problem]
    if problems:
        return problems[0]
    return dropout_problem(fed.method.model)


def dropout_problem(model: nn.Module) -> str | None:
    """Dropout > 0 draws per-client random masks that vmap cannot reproduce from each client's stream."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return f"dropout {module.p:g} at {name or 'the model'} (per-client dropout streams)"
    rate = getattr(getattr(model, "config", None), "attention_dropout", 0.0)  # Llama-style: functional, no module
    if isinstance(rate, (int, float)) and rate > 0:
        return f"attention dropout {rate:g} (per-client dropout streams)"
    return None  # any other random op inside the forward makes vmap refuse (randomness="error") at the first step


# --- how many clients per group ----------------------------------------------------------------------
def group_size(setting: int | str, model: nn.Module, parameters: list[nn.Parameter], batch: int, length: int,
               per_example: bool = False) -> int:
    """``client_batch`` as a number: itself, or under ``auto`` as many clients as fit in a share of the
    measured free memory (CUDA: the device's; CPU: MemAvailable), capped. ``per_example``: DP-SGD, which
    holds every example's gradient."""
    if setting != "auto":
        return int(setting)
    device = parameters[0].device
    per_client = client_bytes(model, parameters, batch, length, per_example)
    cap = CUDA_CAP if device.type == "cuda" else CPU_CAP
    return max(1, min(cap, int(MEMORY_SHARE * free_bytes(device) // max(per_client, 1))))


def client_bytes(model: nn.Module, parameters: list[nn.Parameter], batch: int, length: int,
                 per_example: bool = False) -> int:
    """Memory one more client in a group costs: its trainable tensors four times (weights, gradient,
    Adam's two moments) plus activations kept for backward, after Korthikanti et al. (2022): about
    34 s b h bytes per layer in 16-bit (doubled for float32) plus 5 a s^2 b for attention scores, and
    the logits three times in float32; under DP-SGD (``per_example``) each example's gradient too, for
    three times the expected batch (a Poisson batch varies). An estimate, deliberately generous."""
    trainable = sum(p.numel() * p.element_size() for p in parameters)
    config = getattr(model, "config", None)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 1024)
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 24)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 16)
    vocab = int(getattr(config, "vocab_size", 0) or 32_000)
    activations = layers * (68 * length * batch * hidden + 10 * heads * length * length * batch)
    return 4 * trainable + activations + 12 * batch * length * vocab + (3 * batch * trainable if per_example else 0)


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30  # no /proc: assume a small machine


def groups_of(jobs: dict[int, LocalJob], size: int) -> tuple[list[list[int]], list[tuple[int, str]]]:
    """Clients in balanced groups of at most ``size`` that share a batch size (a client with fewer examples
    than ``batch_size`` trains on smaller batches); and the clients left alone, each with why (they train
    sequentially)."""
    by_batch: dict[int, list[int]] = {}
    for client, job in jobs.items():
        by_batch.setdefault(min(job.batch_size, len(job.examples)), []).append(client)
    groups, alone = [], []
    for clients in by_batch.values():
        count = math.ceil(len(clients) / size)
        for chunk in [clients[i * len(clients) // count:(i + 1) * len(clients) // count] for i in range(count)]:
            if len(chunk) > 1:
                groups.append(chunk)
            else:
                alone.append((chunk[0], _alone_reason(len(jobs), len(clients), size)))
    return groups, alone


def _alone_reason(sampled: int, same_batch: int, size: int) -> str:
    if sampled == 1:
        return "one client sampled"
    if same_batch == 1:
        return "batch size differs from the other clients'"
    return f"group of one at client_batch {size}" + (" (auto: memory)" if size == 1 else "")


def train_round(fed: RoundFederation, jobs: dict[int, LocalJob], batching: Batching) -> dict[int, Trained]:
    """Train the round's clients (``jobs``, in sampled order) in groups; returns what each batched client
    trained to. Clients missing from the answer train sequentially, their reason counted in ``batching``.
    Under a defense that replaces local training with DP-SGD, groups train through ``private_group`` with
    each client's ``PrivateSteps``; a client the defense keeps alone trains sequentially."""
    replacing = next((d for d in fed.defenses if d.replaces_training), None)
    stated: dict[int, PrivateSteps] = {}
    if replacing is not None:
        for client, job in jobs.items():
            rule = replacing.private_steps(client, len(job.examples), job.batch_size)
            if rule is None:
                batching.sequential(f"defense {replacing.name} trains this client alone", 1)
            else:
                stated[client] = rule
        jobs = {c: job for c, job in jobs.items() if c in stated}
    if not jobs:
        return {}
    size = _size(fed, next(iter(jobs.values())), per_example=replacing is not None)
    groups, alone = groups_of(jobs, size)
    for _, reason in alone:
        batching.sequential(reason, 1)
    names = [name for name, _ in fed.method.named_trainable]
    trained: dict[int, Trained] = {}
    for index, group in enumerate(groups):
        try:
            if replacing is None:
                results = train_group([jobs[c] for c in group], names, fed.method.flat_with)
            else:
                results = train_private_group([jobs[c] for c in group], [stated[c] for c in group], names,
                                              fed.method.flat_with)
        except Unbatchable as error:
            batching.refused = str(error)
            batching.sequential(str(error), sum(len(g) for g in groups[index:]))
            break
        trained.update(zip(group, results))
        batching.batched_clients += len(group)
        batching.groups += 1
        batching.largest_group = max(batching.largest_group, len(group))
    return trained


def _size(fed: RoundFederation, job: LocalJob, per_example: bool) -> int:
    setting = fed.settings.client_batch
    if setting != "auto":
        return int(setting)
    rows = min(job.batch_size, len(job.examples))
    length = int(job.collate(job.examples[:rows])["input_ids"].shape[1])  # a typical batch's sequence length
    return group_size("auto", fed.method.model, job.parameters, rows, length, per_example)


# --- one group -----------------------------------------------------------------------------------------
def train_group(jobs: list[LocalJob], names: list[str],
                flat_with: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> list[Trained]:
    """Train ``jobs`` (same model, steps, batch size and optimizer) together; ``names`` are the model's
    trainable parameter names in ``job.parameters`` order, ``flat_with`` makes a client's flat state from
    its trained tensors (``Method.flat_with``: a phased method's flat state also holds what this phase
    leaves alone). Fills each job's ``seen`` and ``step_update`` and leaves its rng where sequential
    training would; the model's own parameters are not changed."""
    first = jobs[0]
    model = first.model
    model.train()
    stacked = stacked_copies(first.parameters, len(jobs))
    optimizer = make_optimizer(first.optimizer, stacked, first.lr)
    rngs = [copied(job.rng) for job in jobs]  # drawn on copies: a refused first step leaves the jobs untouched
    schedules = [batch_indices(_with_rng(job, rng)) for job, rng in zip(jobs, rngs)]
    totals = torch.zeros(len(jobs), dtype=torch.float64, device=stacked[0].device)
    step_grads = None
    for step in range(first.steps):
        batches = [job.collate([job.examples[i] for i in schedule[step]]) for job, schedule in zip(jobs, schedules)]
        optimizer.zero_grad(set_to_none=True)
        losses = _losses(first, model, dict(zip(names, stacked)), stack_batches(batches, model), step == 0)
        losses.sum().backward()
        if first.report_step and first.steps == 1 and first.optimizer == "sgd":
            step_grads = [-first.lr * torch.cat([s.grad[k].reshape(-1).float() for s in stacked]) for k in range(len(jobs))]
        optimizer.step()
        totals += losses.detach().double()
    # Before the clients' flat states are built: the optimizer's state (Adam: two copies of every client's
    # tensors) and the gradients (one more) are dropped, so the flats never sit beside them (a run's peak
    # memory on a 135M-parameter full fine-tuning).
    del optimizer
    for tensor in stacked:
        tensor.grad = None
    for k, (job, rng) in enumerate(zip(jobs, rngs)):
        job.rng.set_state(rng.get_state())
        job.seen.extend(schedules[k])
        job.step_update = step_grads[k] if step_grads is not None else None
    return [Trained({"loss": float(totals[k]) / max(first.steps, 1)},
                    flat_with({name: s.detach()[k] for name, s in zip(names, stacked)})) for k in range(len(jobs))]


def _losses(job: LocalJob, model: nn.Module, params: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
            first_step: bool) -> torch.Tensor:
    """Each client's mean loss on its batch, shape (clients,), through one vmapped functional call."""

    def client_loss(client_params: dict[str, torch.Tensor], client_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return job.example_losses(Bound(model, client_params), client_batch).mean()

    return vmapped_call(model, client_loss, params, batch, first_step=first_step)


def _with_rng(job: LocalJob, rng: torch.Generator) -> LocalJob:
    return replace(job, rng=rng, seen=[])
