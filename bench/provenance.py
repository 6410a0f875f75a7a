"""Where a result came from: git commit, package versions, device, peak memory."""

from __future__ import annotations

import functools
import importlib.metadata
import resource
import subprocess
import sys
from pathlib import Path

PACKAGES = ("torch", "transformers", "peft", "opacus", "tenseal", "cryptography", "bitsandbytes")


@functools.cache
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5)
        return (out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.cache
def package_versions() -> str:
    found = [f"python={sys.version.split()[0]}"]
    for name in PACKAGES:
        try:
            found.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return " ".join(found)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
