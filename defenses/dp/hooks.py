"""Per-sample gradients with Opacus 1.6 hooks, for ``defenses/dp/sgd.py`` (DP-SGD in a client).

Modes (Opacus names): ``hooks`` (per-layer closed forms; functorch for layers without one),
``functorch`` (vmap for every layer), ``ghost`` (ghost clipping, Li et al. 2022: per-sample norms
without materialising per-sample gradients, then a second backward of the clip-weighted loss; rejects
tied parameters such as GPT-2's wte/lm_head under full fine-tuning).

What goes beyond plain Opacus usage (each checked against batch-of-one autograd in the tests):

- ``_keep_fresh`` samplers: a layer's fresh per-sample gradient becomes the parameter's buffer,
  instead of Opacus' zero-filled buffer plus copy.
- ``_mixed_linear_norm_sample``: mixed ghost clipping (Bu et al. 2022) for linear layers in ``ghost``.
- ``expanded_position_ids``: HF models default to ``position_ids`` of shape (1, length), so a
  learned position embedding (GPT-2's ``wpe``) sees no per-example dimension; we pass (batch, length).
- ``ActivationOnlyBackward``: Opacus' hooks compute each example's weight gradient themselves, so the
  summed weight gradients autograd would also compute are thrown away by the DP optimizer. We
  backpropagate only to zero-valued leaves added to the outputs of trainable modules whose inputs need
  no gradient (the first trainable layers): every trainable layer is still on the backward path, but
  autograd skips the weight-gradient matmuls (a third of a step's FLOPs under full fine-tuning).
  If a trainable layer reads a grad-requiring input that does not come from our leaves, its
  gradient would be missing: the step is redone with a full backward, for the rest of the job.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from opacus.grad_sample import GradSampleHooks, GradSampleHooksFastGradientClipping
from torch import nn
from torch.utils.hooks import RemovableHandle

from bench.client.training import LocalJob

MODES = ("hooks", "ghost", "functorch")
"""Per-sample-gradient modes, in order of preference when their timings are close."""


def _keep_fresh(sampler: Callable) -> Callable:
    """Wrap an Opacus grad sampler so a layer's fresh per-sample gradient becomes the parameter's
    buffer directly: Opacus would zero-fill a new buffer and copy it in (15% of a full fine-tuning
    step on CPU). Tied parameters (a second contribution) still go through Opacus' accumulation."""

    def compute(module: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
        passed_on = {}
        for param, grad_sample in sampler(module, activations, backprops).items():
            fresh = not hasattr(param, "_current_grad_sample") and len(grad_sample) == module.max_batch_len
            if param.requires_grad and fresh:
                param._current_grad_sample = grad_sample
            else:
                passed_on[param] = grad_sample
        return passed_on

    return compute


class _LeanGradSampleHooks(GradSampleHooks):
    """Opacus' ``hooks`` mode with ``_keep_fresh`` samplers (the same per-sample gradients)."""

    def __init__(self, model: nn.Module, **kwargs: object):  # Opacus' own options, passed on unread
        self.GRAD_SAMPLERS = {cls: _keep_fresh(fn) for cls, fn in GradSampleHooks.GRAD_SAMPLERS.items()}
        super().__init__(model, **kwargs)


def _mixed_linear_norm_sample(layer: nn.Linear, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    """Mixed ghost clipping (Bu et al. 2022): per layer, the cheaper of Opacus' ghost norm, about
    T^2 (d_in + d_out) per example, and the norm of the instantiated per-example gradient, T d_in d_out.
    Narrow layers (LoRA factors, small models) are far cheaper instantiated; wide ones keep ghost."""
    length, d_out = backprops.shape[1:] if backprops.dim() == 3 else (0, 0)
    d_in = layer.in_features
    if backprops.dim() != 3 or d_in * d_out >= length * (d_in + d_out):
        return _OPACUS_LINEAR_NORM(layer, activations, backprops)
    out = {}
    if layer.weight.requires_grad:
        grads = torch.einsum("nti,ntj->nij", backprops, activations[0].to(backprops.dtype))
        out[layer.weight] = grads.flatten(1).norm(dim=1)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(1).norm(dim=1)
    return out


_OPACUS_LINEAR_NORM = GradSampleHooksFastGradientClipping.NORM_SAMPLERS[nn.Linear]


class _LeanGhostClippingHooks(GradSampleHooksFastGradientClipping):
    """Opacus' ``ghost`` mode with mixed ghost norms for linear layers and ``_keep_fresh`` samplers."""

    def __init__(self, model: nn.Module, **kwargs: object):  # Opacus' own options, passed on unread
        self.GRAD_SAMPLERS = {cls: _keep_fresh(fn) for cls, fn in GradSampleHooks.GRAD_SAMPLERS.items()}
        self.NORM_SAMPLERS = {**GradSampleHooksFastGradientClipping.NORM_SAMPLERS, nn.Linear: _mixed_linear_norm_sample}
        super().__init__(model, **kwargs)


_HOOK_FACTORIES: dict[str, Callable[[nn.Module, float], GradSampleHooks]] = {
    # loss_reduction="sum": the trainer backpropagates the sum of per-example losses, so the hooks
    # see each example's own gradient; the DP optimizer divides by the expected batch size.
    "hooks": lambda model, clip: _LeanGradSampleHooks(model, loss_reduction="sum"),
    "functorch": lambda model, clip: GradSampleHooks(model, loss_reduction="sum", force_functorch=True),
    "ghost": lambda model, clip: _LeanGhostClippingHooks(
        model, loss_reduction="sum", max_grad_norm=clip, use_ghost_clipping=True
    ),
}


# --- backpropagating to activations only ----------------------------------------------------------


@dataclass
class ActivationOnlyBackward:
    """Zero leaves on trainable-module outputs, so backward can skip autograd's weight gradients."""

    handles: list[RemovableHandle] = field(default_factory=list)
    leaves: list[torch.Tensor] = field(default_factory=list)
    collecting: bool = False
    enabled: bool = True
    """Turned off for the session when a trainable layer's input needs a gradient that does not come
    from our leaves (e.g. ``enable_input_require_grads``): that layer would be off the backward path."""

    def install(self, model: nn.Module) -> None:
        for module in model.modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                self.handles.append(module.register_forward_hook(self._add_leaf))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.leaves = [], []

    def _add_leaf(self, module: nn.Module, args: tuple, output: object) -> torch.Tensor | None:
        """A forward hook: ``output`` is whatever the module returns (only a float tensor gets a leaf)."""
        if not (self.collecting and torch.is_grad_enabled() and torch.is_tensor(output) and output.is_floating_point()):
            return None
        if any(torch.is_tensor(a) and a.requires_grad for a in args):
            return None  # already downstream of a trainable layer, hence of a leaf
        leaf = torch.zeros((), dtype=output.dtype, device=output.device, requires_grad=True)
        self.leaves.append(leaf)
        return output + leaf

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        self.leaves, self.collecting = [], self.enabled
        try:
            yield
        finally:
            self.collecting = False

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        leaves, self.leaves = self.leaves, []
        if leaves:
            torch.autograd.backward(loss, inputs=leaves, retain_graph=retain_graph)
        else:
            loss.backward(retain_graph=retain_graph)


# --- backward passes per mode ---------------------------------------------------------------------


class MissingPerSampleGradients(RuntimeError):
    """Some trainable parameter got no per-sample gradient (or norm) from the backward pass."""


def _per_sample_backward(
    hooks: GradSampleHooks, losses: torch.Tensor, params: list[nn.Parameter], graph: ActivationOnlyBackward
) -> None:
    graph.backward(losses.sum())
    missing = [tuple(p.shape) for p in params if getattr(p, "grad_sample", None) is None]
    if missing:
        raise MissingPerSampleGradients(f"no per-sample gradient for parameters of shapes {missing[:3]}")
    _check_one_row_per_example(len(losses), {len(p.grad_sample) for p in params if torch.is_tensor(p.grad_sample)})


def _check_one_row_per_example(examples: int, rows: set[int]) -> None:
    """The privacy unit is one example: a forward that packs several sequences per example into one
    batch (e.g. chosen and rejected side by side) would clip each sequence, not each example."""
    if rows != {examples}:
        raise RuntimeError(
            f"per-sample gradients have {sorted(rows)} rows for {examples} examples: the model must be "
            "called with one row per example (run paired sequences as separate forward calls)"
        )


def _ghost_backward(
    hooks: GradSampleHooksFastGradientClipping, losses: torch.Tensor, params: list[nn.Parameter],
    graph: ActivationOnlyBackward,
) -> None:
    """Pass 1 gives per-sample norms; pass 2 backpropagates the clip-weighted sum (Li et al. 2022)."""
    for p in params:
        vars(p).pop("_norm_sample", None)  # a stale norm from the previous step would hide a gap
    graph.backward(losses.sum(), retain_graph=True)
    missing = [tuple(p.shape) for p in params if getattr(p, "_norm_sample", None) is None]
    if missing:
        raise MissingPerSampleGradients(f"no per-sample gradient norm for parameters of shapes {missing[:3]}")
    coefficients = hooks.get_clipping_coef().detach().to(losses.device, losses.dtype)
    _check_one_row_per_example(len(losses), {len(coefficients)})
    for p in params:
        p.grad = None
    hooks.disable_hooks()
    try:
        (coefficients * losses).sum().backward()
    finally:
        hooks.enable_hooks()


BACKWARD = {"hooks": _per_sample_backward, "functorch": _per_sample_backward, "ghost": _ghost_backward}


def per_sample_norm_of(mode: str, hooks: GradSampleHooks, params: list[nn.Parameter]) -> torch.Tensor:
    """Per-example gradient norms after a ``BACKWARD[mode]`` pass."""
    if mode == "ghost":
        return hooks.per_sample_gradient_norms.detach()
    per_param = [p.grad_sample.reshape(len(p.grad_sample), -1).norm(dim=1) for p in params]
    return torch.stack(per_param, dim=1).norm(dim=1).detach()


# --- position ids ---------------------------------------------------------------------------------


@contextlib.contextmanager
def expanded_position_ids(model: nn.Module) -> Iterator[None]:
    """Pass ``position_ids`` of shape (batch, length) to every submodule whose forward takes them.

    ``arange(length)`` is exactly HF's default without a cache, so outputs do not change. Calls that
    carry ``past_key_values`` (prefix tuning; its position embedding is frozen) are left alone.
    """
    handles = []
    for module in model.modules():
        parameters = _forward_parameters(type(module))
        if "position_ids" in parameters and ("input_ids" in parameters or "inputs_embeds" in parameters):
            handles.append(module.register_forward_pre_hook(_position_ids_hook(parameters), with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


_SIGNATURES: dict[type, tuple[str, ...]] = {}


def _forward_parameters(cls: type) -> tuple[str, ...]:
    if cls not in _SIGNATURES:
        try:
            _SIGNATURES[cls] = tuple(inspect.signature(cls.forward).parameters)[1:]
        except (TypeError, ValueError):
            _SIGNATURES[cls] = ()
    return _SIGNATURES[cls]


def _position_ids_hook(parameters: tuple[str, ...]) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if kwargs.get("position_ids") is not None or kwargs.get("past_key_values") is not None:
            return None
        if "position_ids" in parameters[: len(args)]:
            return None  # given positionally
        bound = dict(zip(parameters, args, strict=False))
        reference = kwargs.get("input_ids", bound.get("input_ids"))
        if reference is None:
            reference = kwargs.get("inputs_embeds", bound.get("inputs_embeds"))
        if reference is None or reference.dim() < 2:
            return None
        batch, length = reference.shape[:2]
        kwargs["position_ids"] = torch.arange(length, device=reference.device).expand(batch, length)
        return args, kwargs

    return hook


# --- attaching and detaching ----------------------------------------------------------------------


@dataclass
class Attached:
    """Opacus hooks of one mode on one model, with our activation-only backward."""

    model: nn.Module
    mode: str
    hooks: GradSampleHooks
    """The mode's Opacus hooks (``GradSampleHooksFastGradientClipping`` under ``ghost``)."""
    graph: ActivationOnlyBackward
    params: list[nn.Parameter]

    def step(self, compute_losses: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Forward (``compute_losses``) and per-sample backward of one batch; the per-example losses."""
        if self.graph.enabled:
            with self.graph.forward():
                losses = compute_losses()
            try:
                BACKWARD[self.mode](self.hooks, losses, self.params, self.graph)
                return losses
            except MissingPerSampleGradients:
                self.graph.enabled = False  # redo this batch, and the rest of the job, with full backward
                self._forget_partial_pass()
        losses = compute_losses()
        BACKWARD[self.mode](self.hooks, losses, self.params, self.graph)
        return losses

    def _forget_partial_pass(self) -> None:
        for p in self.params:
            p.grad, p.grad_sample = None, None
            p._forward_counter = 0
            for partial in ("_current_grad_sample", "_norm_sample"):
                vars(p).pop(partial, None)
        for module in self.model.modules():
            for leftover in ("activations", "max_batch_len"):
                vars(module).pop(leftover, None)

    def norms(self) -> torch.Tensor:
        return per_sample_norm_of(self.mode, self.hooks, self.params)


@contextlib.contextmanager
def attached(model: nn.Module, mode: str, params: list[nn.Parameter], max_grad_norm: float) -> Iterator[Attached]:
    """Opacus hooks of ``mode`` on ``model`` for the duration of the block, then removed.

    Hooks are not kept between client jobs: the base model is shared with evaluation, attacks and
    later scenarios, where attached hooks (even disabled) slow every backward by 7-16% and warn.
    Attaching costs 6-18 ms per job on a 1.3M-parameter Llama (measured in the report).
    """
    model.train()  # Opacus captures activations only in train mode
    hooks = _HOOK_FACTORIES[mode](model, max_grad_norm)
    graph = ActivationOnlyBackward()
    graph.install(model)
    try:
        with expanded_position_ids(model), warnings.catch_warnings():
            # Opacus' full backward hooks fire on modules whose inputs need no grad (embeddings), and
            # its functorch path asks for CPU autocast in float32, which torch ignores.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            warnings.filterwarnings("ignore", message="CPU Autocast only supports")
            yield Attached(model, mode, hooks, graph, params)
    finally:
        graph.remove()
        hooks.cleanup()  # removes the hooks and the attributes Opacus put on parameters
        for module in model.modules():
            for leftover in ("activations", "max_batch_len"):
                # ``vars``, not ``hasattr``: peft wrappers forward attribute reads to the wrapped layer
                vars(module).pop(leftover, None)


def per_sample_gradients(job: LocalJob, batch: dict[str, torch.Tensor], mode: str) -> list[torch.Tensor]:
    """Each example's gradient for every trainable parameter, shape (batch, *shape), by Opacus
    ``mode`` (``hooks`` or ``functorch``); leaves no hooks or gradients behind."""
    with attached(job.model, mode, job.parameters, 1.0) as session:
        session.step(lambda: job.example_losses(job.model, batch))
        grads = [p.grad_sample.detach().clone() for p in job.parameters]
    for p in job.parameters:
        p.grad = None
    return grads


def per_sample_norms(job: LocalJob, batch: dict[str, torch.Tensor], mode: str) -> torch.Tensor:
    """Each example's gradient L2 norm over all trainable parameters, by Opacus ``mode``."""
    with attached(job.model, mode, job.parameters, 1.0) as session:
        session.step(lambda: job.example_losses(job.model, batch))
        norms = session.norms()
    for p in job.parameters:
        p.grad = None
    return norms
