"""A content-addressed memo, in the cache folder, for pure computations that runs repeat.

A Table 4 row runs one scenario per defense with the same seed, and an attack whose preparation does not
read what a defense changes (``inversion-learned`` trains its decoder on public records at the broadcast
state, before it looks at any update) would compute the same thing in every cell. The key is a digest of
everything the computation reads, so a hit returns exactly what recomputing would; an input that differs
in one bit (a thread count that moves a float) is a miss, never a wrong answer. Entries are written
atomically (a temporary file renamed into place); an unreadable entry is a miss. ``TIERBENCH_CACHE``
moves the folder, as it does for the model cache.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path

import torch

from bench.api.files import atomic_write_with


def cache_root() -> Path:
    """The cache folder: ``TIERBENCH_CACHE``, else ``~/.cache/tierbench``."""
    return Path(os.environ.get("TIERBENCH_CACHE", Path.home() / ".cache" / "tierbench"))


def digest(*parts: object) -> str:
    """A hex digest of ``parts``: tensors by dtype, shape and bytes, everything else by ``repr``."""
    hasher = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            flat = part.detach().cpu().contiguous()
            hasher.update(f"{flat.dtype}{tuple(flat.shape)}".encode())
            # reshape: a 0-dim tensor (a counter buffer in a model's state) cannot be viewed as bytes directly
            hasher.update(flat.reshape(-1).view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        else:
            hasher.update(repr(part).encode())
        hasher.update(b"\x00")
    return hasher.hexdigest()


def _path(kind: str, key: str) -> Path:
    return cache_root() / "memo" / kind / f"{key}.pt"


def load(kind: str, key: str) -> dict[str, object] | None:
    """The entry ``save`` wrote under ``key``, or None (absent or unreadable)."""
    path = _path(kind, key)
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # a truncated or foreign file: recompute
        return None


def save(kind: str, key: str, value: dict[str, object]) -> None:
    """Write ``value`` (tensors, numbers, strings, lists and dicts of them) under ``key``, atomically."""
    atomic_write_with(_path(kind, key), lambda file: torch.save(value, file))


def platform(device: torch.device | str) -> tuple[str, str, int, str]:
    """What a computation's floats depend on besides its inputs: the torch build, its CPU kernel path, the thread
    count and the device. Every memo key includes it."""
    return torch.__version__, torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(), str(device)


_PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def _source_digest(files: tuple[str, ...]) -> str:
    return digest(*[(name, Path(name).read_bytes()) for name in files])


def source_digest(*components: object) -> str:
    """A digest of the ``bench`` package's source and of the files that define ``components`` (instances or
    classes: a method or task a plugin folder registered lives outside the package). A memo of something the
    harness trains keys on it: any change to the code that could change the result is a miss (coarser than
    needed, never stale). Read once per process."""
    files = {str(p) for p in _PACKAGE.rglob("*.py")}
    for component in components:
        cls = component if isinstance(component, type) else type(component)
        module = sys.modules.get(cls.__module__)
        source = vars(module).get("__file__") if module is not None else None  # None for a module built in memory
        if source:
            files.add(str(Path(source).resolve()))
    return _source_digest(tuple(sorted(files)))
