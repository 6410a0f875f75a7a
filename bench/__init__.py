"""TierBench: privacy attacks and defenses in federated post-training, per openness tier."""

from bench.api.numerics import pin_cpu_kernels

pin_cpu_kernels()  # before any tensor operation: PyTorch reads the kernel path once (bench.api.numerics)

__version__ = "0.1.0"
