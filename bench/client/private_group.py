"""Record-level DP-SGD for a round's clients together: every client's per-example gradients in one pass.

``defenses/dp/sgd.py`` trains one client at a time through Opacus 1.6; a defense that states its step as
``bench.api.private_steps.PrivateSteps`` (``dp-local`` under ``grad_sample_mode: auto``) lets
``bench.client.batched`` train a group here instead. Why this is what the one-client trainer computes:

- batches: each client draws each step's Poisson batch from its own generator (``poisson_batch``), and
  after the gradients its noise from that same generator, one draw per trainable tensor in order, as
  Opacus' ``DPOptimizer`` does (``generator_on`` makes the noise generator once, before the first step,
  where the optimizer's constructor makes it);
- per-example gradients: every drawn example of every client is one row of one vmapped forward, with its
  client's trainable tensors gathered to it and the frozen base shared; the gradient with respect to the
  gathered copies is each example's own (Opacus' ``functorch`` mode computes the same per client). Poisson
  batches differ in size and nothing is padded; a client that drew nothing adds noise only;
- clipping, noise and scaling are Opacus' ``clip_and_accumulate``, ``add_noise`` and ``scale_grad``, per
  client: factor ``min(1, C / (norm + 1e-6))``, noise std ``noise_multiplier * C``, division by ``q n``;
- optimizer state: SGD and Adam are elementwise, so one optimizer over the stacked tensors is each
  client's own (as in ``bench.client.batched``).
What differs is the floating-point order of the kernels (``tests/test_private_group.py`` states the
tolerances). The privacy accounting is the defense's: ``PrivateSteps.finished`` gets each client's steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.api.private_steps import CLIP_EPSILON, PrivateSteps, generator_on, poisson_batch
from bench.client.training import LocalJob, make_optimizer
from bench.client.vmapped import Bound, Trained, copied, stack_batches, stacked_copies, vmapped_call


def train_private_group(jobs: list[LocalJob], rules: list[PrivateSteps], names: list[str],
                        flat_with: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> list[Trained]:
    """DP-SGD for ``jobs`` (same model, steps and optimizer), client k under ``rules[k]``; returns each
    client's mean batch loss and flat trained state (``Trained``). Fills each job's ``seen``, leaves its rng where the
    one-client trainer would, and calls each rule's ``finished``; the model's own parameters are unchanged.
    Raises ``Unbatchable`` at the first step, with the jobs untouched, when vmap refuses the model."""
    first = jobs[0]
    first.model.train()
    stacked = stacked_copies(first.parameters, len(jobs))
    optimizer = make_optimizer(first.optimizer, stacked, first.lr)
    rngs = [copied(job.rng) for job in jobs]
    noise = [generator_on(stacked[0].device, rng) for rng in rngs]
    seen: list[list[list[int]]] = [[] for _ in jobs]
    batch_losses: list[list[float]] = [[] for _ in jobs]
    computed = False  # until the first vmapped pass, a refusal means the model cannot batch (Unbatchable)
    for _ in range(first.steps):
        draws = [poisson_batch(len(job.examples), rule.sample_rate, rng) for job, rule, rng in zip(jobs, rules, rngs)]
        summed, losses = _clipped_sums(jobs, rules, names, stacked, draws, first_step=not computed)
        computed = computed or any(draws)
        for k, drawn in enumerate(draws):
            seen[k].append(drawn)
            if drawn:
                batch_losses[k].append(float(losses[k].mean()))
        optimizer.zero_grad(set_to_none=True)
        for i, tensor in enumerate(stacked):
            tensor.grad = torch.stack([_noisy_mean(summed[i][k], rule, len(job.examples), noise[k])
                                       for k, (job, rule) in enumerate(zip(jobs, rules))])
        optimizer.step()
    del optimizer
    for tensor in stacked:
        tensor.grad = None
    for k, (job, rule, rng) in enumerate(zip(jobs, rules, rngs)):
        job.rng.set_state(rng.get_state())
        job.seen.extend(seen[k])
        rule.finished(first.steps)
    return [Trained({"loss": sum(losses) / len(losses) if losses else float("nan")},
                    flat_with({name: s.detach()[k] for name, s in zip(names, stacked)})) for k, losses in enumerate(batch_losses)]


def _clipped_sums(jobs: list[LocalJob], rules: list[PrivateSteps], names: list[str], stacked: list[torch.Tensor],
                  draws: list[list[int]], first_step: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per trainable tensor, each client's sum of clipped per-example gradients, shape (clients, *shape);
    and each client's per-example losses.

    Every drawn example of every client is one row, with its client's tensors gathered to it (``owner``):
    the gradient of the rows' summed losses with respect to the gathered tensors is, row by row, each
    example's own gradient (a row's loss reads only its own copy). No row is padding, whatever the
    Poisson draws' sizes."""
    owner = torch.tensor([k for k, drawn in enumerate(draws) for _ in drawn], dtype=torch.long, device=stacked[0].device)
    if len(owner) == 0:  # every batch empty: the step releases noise only
        return [torch.zeros_like(s) for s in stacked], [torch.zeros(0, device=owner.device) for _ in jobs]
    model = jobs[0].model
    batch = stack_batches([job.collate([job.examples[i]]) for job, drawn in zip(jobs, draws) for i in drawn], model)
    gathered = [s.detach()[owner].requires_grad_(True) for s in stacked]
    job = jobs[0]

    def row_loss(params: dict[str, torch.Tensor], row: dict[str, torch.Tensor]) -> torch.Tensor:
        return job.example_losses(Bound(model, params), row).sum()

    losses = vmapped_call(model, row_loss, dict(zip(names, gathered)), batch, first_step=first_step)
    per_example = torch.autograd.grad(losses.sum(), gathered)
    norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in per_example], dim=-1).norm(2, dim=-1)
    max_norms = torch.tensor([rules[k].max_grad_norm for k in owner.tolist()], dtype=norms.dtype, device=norms.device)
    factor = (max_norms / (norms + CLIP_EPSILON)).clamp(max=1.0)
    sums = []
    for g, s in zip(per_example, stacked):
        clipped = g * factor.to(g.dtype).reshape(-1, *([1] * (g.dim() - 1)))
        sums.append(torch.zeros_like(s).index_add_(0, owner, clipped))
    losses = losses.detach()
    return sums, [losses[owner == k] for k in range(len(jobs))]


def _noisy_mean(summed: torch.Tensor, rule: PrivateSteps, examples: int, generator: torch.Generator) -> torch.Tensor:
    """Opacus' ``add_noise`` then ``scale_grad``: the clipped sum plus N(0, (z C)^2), over the expected batch q n."""
    std = rule.noise_multiplier * rule.max_grad_norm
    if std != 0:  # Opacus draws nothing at std 0
        summed = summed + torch.normal(mean=0, std=std, size=summed.shape, device=summed.device,
                                       generator=generator, dtype=summed.dtype)
    return summed / (rule.sample_rate * examples)
