"""One CPU kernel path for every run, so a published figure reruns bit for bit on another x86 machine.

PyTorch picks its vectorised CPU kernels by what the processor offers (``torch.backends.cpu.
get_cpu_capability()``): AVX2 on one machine, AVX-512 on the next. The two sum in different orders, so the
zoo models' pretraining, and every number measured on them, moves with the machine: on an AVX-512 machine,
runs published from an AVX2 machine came back with another base perplexity (3.668 against 3.689) and
membership figures that differed by a member or more (session 28, issue 15; which published runs were made
on which path: results/studies/kernel-paths/). PyTorch reads ``ATEN_CPU_CAPABILITY`` once, at the first
kernel it dispatches, so pinning it when ``bench`` is imported (before any tensor operation) gives every run
the AVX2 path where the processor has it, and MKL and oneDNN the same (``LIBRARIES``). A value the user sets
is left alone; a processor without AVX2, or not x86, keeps its default. The path a run took is recorded in
its provenance (``cpu_kernels``) either way.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

PINNED = "avx2"
"""The kernel path pinned on x86 processors that have it (Intel since 2013, AMD since 2015)."""
VARIABLE = "ATEN_CPU_CAPABILITY"


def _has_avx2() -> bool:
    if platform.machine().lower() not in {"x86_64", "amd64"}:
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: cannot tell cheaply, keep PyTorch's choice
        return False
    return any(line.startswith("flags") and "avx2" in line.split() for line in cpuinfo.splitlines())


LIBRARIES = {"MKL_CBWR": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"}
"""The same pin for the libraries PyTorch calls (MKL's matrix products, oneDNN): on the AMD machines measured
they already took one path (setting these changed no digit); on an Intel AVX-512 processor MKL may pick its
AVX-512 kernels (not measured: no such machine here)."""


def pin_cpu_kernels() -> None:
    """Set ``ATEN_CPU_CAPABILITY`` (and MKL's and oneDNN's equivalents) to AVX2 unless the user set it or the
    processor lacks AVX2; a user who chose a path for PyTorch chooses it for the libraries too."""
    if VARIABLE not in os.environ and _has_avx2():
        os.environ[VARIABLE] = PINNED
        for name, value in LIBRARIES.items():
            os.environ.setdefault(name, value)


def cpu_kernels() -> str:
    """The CPU kernel path PyTorch uses in this process (e.g. ``AVX2``)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()
