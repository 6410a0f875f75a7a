"""Does a zoo model depend on the thread count of the process that builds it? (The README's
"Reproducibility" figures.)

    python -m bench.tools.zoo_threads [--layers 2 --hidden 64 --vocab 1024] [--threads 1 2]

builds the ``tiny-gpt2`` zoo model of the given size once per thread count, each into a fresh cache,
with the process's torch thread count set to it, and prints the pretraining wall time and the largest
weight difference from the first build. Since ``ZOO_VERSION`` 2 pretraining pins itself to one thread,
so every difference is 0; on a version-1 checkout the same command shows what the thread count did.
Defaults: the poisoning file's 2-layer model; ``--layers 4 --hidden 128 --vocab 2048`` is Table 4's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)

    from safetensors.torch import load_file

    from bench.api.registry import MODELS
    from bench.world.models import torch_threads

    zoo = MODELS.get("tiny-gpt2")
    config = zoo.Config(layers=args.layers, hidden=args.hidden, vocab=args.vocab)
    first = None
    with tempfile.TemporaryDirectory() as scratch:
        for threads in args.threads:
            os.environ["TIERBENCH_CACHE"] = os.path.join(scratch, f"threads-{threads}")
            started = time.perf_counter()
            with torch_threads(threads):
                path = zoo(config).path()
            seconds = time.perf_counter() - started
            weights = load_file(os.path.join(path, "model.safetensors"))
            first = first or weights
            diff = max((weights[k] - first[k]).abs().max().item() for k in first)
            print(f"threads {threads}: pretrained in {seconds:.0f} s; largest weight difference from the first build {diff:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
