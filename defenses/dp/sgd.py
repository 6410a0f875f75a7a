"""DP-SGD inside one client (Abadi et al. 2016) with Opacus 1.6; used by ``defenses/dp/local.py``.

``run_dp_sgd`` trains a ``LocalJob`` for ``job.steps`` steps. Each step draws a Poisson batch (each
example independently with probability ``q``, from ``job.rng``), clips each example's gradient to
``max_grad_norm`` and adds Gaussian noise of std ``noise_multiplier * max_grad_norm`` to the sum,
which Opacus' ``DPOptimizer`` divides by the expected batch size ``q * n`` (a fixed denominator, so
the mean is unbiased and the sensitivity is ``C / (q n)``) before the job's optimizer steps.

``resolve_mode`` turns ``auto`` into a concrete per-sample-gradient mode (see ``_dp_hooks``): every
mode is probed once per (model class, trainable size, device, dtype); a mode qualifies if its
per-sample norms on a batch of two match batch-of-one autograd, and the fastest qualifying mode on a
batch of the job's size wins, with a 25% margin in favour of the earlier mode in ``MODES`` so that
timing noise does not flip the choice (and the low-order bits of results) between runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from torch import nn

from bench.api.private_steps import generator_on, poisson_batch
from bench.client.training import LocalJob, make_optimizer
from defenses.dp.hooks import MODES, Attached, attached, expanded_position_ids

_OPTIMIZERS: dict[str, type[DPOptimizer]] = {
    "hooks": DPOptimizer,
    "functorch": DPOptimizer,
    "ghost": DPOptimizerFastGradientClipping,  # gradients arrive clipped; it only adds noise and scales
}
_AUTO_CHOICES: dict[tuple, str] = {}
_SPEEDUP_TO_SWITCH = 1.25


@dataclass(frozen=True)
class DPSGDSettings:
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    mode: str
    """A concrete mode from ``MODES`` (``auto`` is resolved by ``resolve_mode`` first)."""


def _empty_batch_gradients(params: list[nn.Parameter]) -> None:
    """A Poisson batch may be empty: the step then releases noise only (the clipped sum is 0)."""
    for p in params:
        p.grad = torch.zeros_like(p)
        p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)


def run_dp_sgd(job: LocalJob, settings: DPSGDSettings, noise_rng: torch.Generator) -> dict[str, float]:
    """``job.steps`` DP-SGD steps on ``job``; fills ``job.seen``; returns the mean batch loss."""
    params, n = job.parameters, len(job.examples)
    optimizer = _OPTIMIZERS[settings.mode](
        make_optimizer(job.optimizer, params, job.lr),
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        expected_batch_size=settings.sample_rate * n,
        loss_reduction="mean",
        generator=generator_on(params[0].device, noise_rng),
    )
    batch_losses: list[float] = []
    with attached(job.model, settings.mode, params, settings.max_grad_norm) as session:
        for _ in range(job.steps):
            indices = poisson_batch(n, settings.sample_rate, job.rng)
            job.seen.append(indices)
            optimizer.zero_grad(set_to_none=True)
            if indices:
                batch = job.collate([job.examples[i] for i in indices])
                losses = session.step(lambda batch=batch: job.example_losses(job.model, batch))
                batch_losses.append(float(losses.detach().mean()))
            else:
                _empty_batch_gradients(params)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"loss": sum(batch_losses) / len(batch_losses) if batch_losses else float("nan")}


# --- auto: probe each mode once per model class ---------------------------------------------------


def resolve_mode(job: LocalJob, requested: str, max_grad_norm: float) -> str:
    """``requested`` itself, or for ``auto`` the fastest mode whose per-sample norms are right."""
    if requested != "auto":
        return requested
    first = job.parameters[0]
    key = (type(job.model), sum(p.numel() for p in job.parameters), first.device.type, first.dtype)
    if key not in _AUTO_CHOICES:
        timings = probe_modes(job, max_grad_norm)
        working = [mode for mode in MODES if isinstance(timings[mode], float)]
        if not working:
            reasons = "; ".join(f"{mode}: {timings[mode]}" for mode in MODES)
            raise RuntimeError(f"no Opacus per-sample-gradient mode works for {type(job.model).__name__} ({reasons})")
        choice = working[0]
        for mode in working[1:]:
            if timings[mode] * _SPEEDUP_TO_SWITCH < timings[choice]:
                choice = mode
        _AUTO_CHOICES[key] = choice
    return _AUTO_CHOICES[key]


def probe_modes(job: LocalJob, max_grad_norm: float) -> dict[str, float | str]:
    """Seconds of one forward+backward per mode, or why the mode does not qualify.

    Neither the parameters nor ``job.rng`` are touched.
    """
    pair = job.collate(job.examples[:2])
    timed = job.collate(job.examples[: max(2, min(job.batch_size, len(job.examples)))])
    with _dropout_off(job.model), expanded_position_ids(job.model):
        reference = _reference_norms(job, pair)
        timings = {mode: _probe_one(job, mode, max_grad_norm, pair, timed, reference) for mode in MODES}
    for p in job.parameters:
        p.grad = None
    return timings


def _probe_one(job: LocalJob, mode: str, clip: float, pair: dict, timed: dict, reference: torch.Tensor) -> float | str:
    try:
        with attached(job.model, mode, job.parameters, clip) as session, _dropout_off(job.model):
            norms = _probe_step(job, session, pair)[1]
            if not torch.allclose(norms, reference, rtol=1e-3, atol=1e-6):
                return f"per-sample norms {norms.tolist()} differ from batch-of-one {reference.tolist()}"
            _probe_step(job, session, timed)  # warm-up at the timed shape
            return _probe_step(job, session, timed)[0]
    except (RuntimeError, NotImplementedError, ValueError, TypeError, AttributeError) as error:
        return f"{type(error).__name__}: {error}"  # e.g. ghost clipping on tied embeddings


def _probe_step(job: LocalJob, session: Attached, batch: dict) -> tuple[float, torch.Tensor]:
    for p in job.parameters:
        p.grad, p.grad_sample = None, None
    start = time.perf_counter()
    session.step(lambda: job.example_losses(job.model, batch))
    if job.parameters[0].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, session.norms()


def _reference_norms(job: LocalJob, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-example gradient norms by plain autograd, one example at a time (sliced from ``batch``)."""
    size = len(job.example_losses(job.model, batch))
    norms = []
    for i in range(size):
        single = {k: v[i : i + 1] if torch.is_tensor(v) and v.dim() and len(v) == size else v for k, v in batch.items()}
        grads = torch.autograd.grad(job.example_losses(job.model, single).sum(), job.parameters, allow_unused=True)
        norms.append(torch.cat([g.reshape(-1) for g in grads if g is not None]).norm())
    return torch.stack(norms).detach()


@contextlib.contextmanager
def _dropout_off(model: nn.Module) -> Iterator[None]:
    """Train mode only on modules that own trainable parameters (Opacus needs it there); dropout
    elsewhere is off, so the batched and one-at-a-time passes compute the same function."""
    modes = {module: module.training for module in model.modules()}
    for module in model.modules():
        module.training = any(p.requires_grad for p in module.parameters(recurse=False))
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training
