"""Shadow models memoised on disk, so that a sweep trains each one once whatever worker asks for it.

A shadow (LiRA's, a calibrated attack's reference) depends on the model, task, method, federation settings,
seed and its examples, never on the run's defenses or attacks (``bench.engine.views.ShadowTrainer``). Table 4
asks for the same shadows in every defense cell of a (method, seed); the in-process cache serves them only
when the same worker process ran the earlier cell and they are still among its last 32. This memo keeps what
training changed (the tensors of the model's state that differ from the freshly prepared model's) in the
cache folder (``bench.api.memo``), keyed by a digest of everything training reads: the shadow's key and seed,
every tensor of the prepared model, the code (``memo.source_digest``), the torch build, its CPU kernel path,
the thread count and the device (float results depend on them). A hit therefore restores exactly the model
training would have produced; anything else is a miss.

A shadow whose changed state exceeds ``MAX_BYTES`` (a full fine-tune of a real model) is not written: the
memo is for the small models a sweep repeats, not a second model cache.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.api import memo

MEMO_KIND = "shadow"
MAX_BYTES = 256 * 2**20


def fingerprint(model: nn.Module) -> dict[str, str]:
    """A digest per tensor of ``model``'s state (what training could change). Digests, not a copy: a copy of a
    large model's state would double its memory on the accelerator; each tensor passes through host memory alone."""
    return {name: memo.digest(t) for name, t in model.state_dict().items() if isinstance(t, torch.Tensor)}


def key(shadow_key: str, seed: int, prepared: dict[str, str], device: torch.device, *code: object) -> str:
    """The digest a shadow is stored under (``prepared``: the ``fingerprint`` of the model before training; ``code``:
    the method, task and model source, whose defining files join the package's source)."""
    return memo.digest(MEMO_KIND, shadow_key, seed, memo.source_digest(*code), *memo.platform(device),
                       *[part for name in sorted(prepared) for part in (name, prepared[name])])


def restore(model: nn.Module, memo_key: str) -> bool:
    """Load the stored changes into ``model`` (freshly prepared); False when there is no usable entry."""
    entry = memo.load(MEMO_KIND, memo_key)
    if entry is None:
        return False
    changed = entry.get("changed")
    state = model.state_dict()
    if not isinstance(changed, dict) or any(name not in state or state[name].shape != t.shape or state[name].dtype != t.dtype
                                            for name, t in changed.items()):
        return False  # written by other code under a colliding key: recompute
    with torch.no_grad():
        for name, tensor in changed.items():
            state[name].copy_(tensor)
    return True


def save(model: nn.Module, memo_key: str, prepared: dict[str, str]) -> None:
    """Store the tensors of ``model``'s state whose digest differs from ``prepared`` (skipped above ``MAX_BYTES``)."""
    changed = {name: t.detach().cpu().clone() for name, t in model.state_dict().items()
               if isinstance(t, torch.Tensor) and memo.digest(t) != prepared.get(name)}
    if sum(t.numel() * t.element_size() for t in changed.values()) <= MAX_BYTES:
        memo.save(MEMO_KIND, memo_key, {"changed": changed})
