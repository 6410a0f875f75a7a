"""Which CPU kernel path made a store's zoo-model runs? (The README's "One CPU kernel path" figures.)

    python -m bench.tools.kernel_fingerprint STORE FILE... [--per-commit 2]

STORE is a results folder (the published one unpacked as the README's "The store is published" says).

Rows made before session 28 do not record their path (``bench.api.numerics``), but their
``model.base_perplexity`` fingerprints it: the base model's perplexity on the run's first evaluation
records depends only on the zoo weights, which differ between paths. For a few rows of each commit (of the
scenarios in FILE... that the store holds), this recomputes that figure in this process and prints it
beside the stored one: ``same`` means the row was made on this process's path. It also counts the groups of
cells a paired difference compares (a file's method, task and seed) whose stored base perplexities disagree,
i.e. whose runs were made on different paths. Run it as is (the pinned
AVX2 path) and again with ``ATEN_CPU_CAPABILITY=avx512`` and another ``TIERBENCH_CACHE`` on a processor that
has AVX-512 (the zoo models are then pretrained on that path, once).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from bench.api.numerics import cpu_kernels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--per-commit", type=int, default=2, help="rows checked per (commit, file)")
    args = parser.parse_args(argv)
    from bench.api.errors import UserError

    try:
        return _fingerprint(args.store, args.files, args.per_commit)
    except UserError as error:  # a wrong path or scenario file: the message, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


def _fingerprint(store: str, files: list[str], per_commit: int) -> int:
    import torch

    from bench.api.registry import load_plugins
    from bench.api.seeding import generator
    from bench.engine.runner import _eval_set, plan
    from bench.scoring import base_perplexity
    from bench.spec.scenario import load
    from bench.store.results import ResultStore

    load_plugins()
    scenarios = {s.hash: (path, s) for path in files for s in load(path)}
    picked: dict[tuple[str, str], list] = defaultdict(list)
    weights: dict[tuple, set[float]] = defaultdict(set)  # per (file, method, task, seed): the base models its cells saw
    for row in ResultStore(store).rows():
        if row["metric"] != "model.base_perplexity" or row["status"] != "ok" or row["scenario_hash"] not in scenarios:
            continue
        path = scenarios[row["scenario_hash"]][0]
        weights[(path, row["method"], row["task"], row["seed"])].add(row["value"])
        key = (row["git_commit"][:7], path)
        if len(picked[key]) < per_commit:
            picked[key].append(row)

    mixed = sum(len(values) > 1 for values in weights.values())
    print(f"(file, method, task, seed) groups whose cells saw more than one base model: {mixed} of {len(weights)}")
    print(f"kernel path of this process: {cpu_kernels()}")
    print("| commit | file | scenario hash | seed | stored | recomputed | |\n|---|---|---|---|---|---|---|")
    for (commit, path), rows in sorted(picked.items()):
        for row in rows:
            scenario = scenarios[row["scenario_hash"]][1]
            built = plan(scenario)
            s = scenario.federation
            data = built.task.load(s.clients * s.examples_per_client, generator("run", row["seed"], "data"))
            measured = base_perplexity.measure(built.model_source, built.task, _eval_set(data.test, s.eval_examples),
                                               torch.device("cpu"))
            if measured is None:  # an encoder: no next-token figure, so no row either
                continue
            metric = measured[0]
            same = "same" if metric.value == row["value"] else "differs"
            print(f"| {commit} | {path} | {row['scenario_hash']} | {row['seed']} | {row['value']:.9f} | "
                  f"{metric.value:.9f} | {same} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
