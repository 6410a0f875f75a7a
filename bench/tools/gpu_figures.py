"""The GPU path, measured (issue 16 item 4): what ``bench/tools/gpu_check.sh`` runs on a machine with a GPU.

    python -m bench.tools.gpu_figures --device cuda --model ../shared/models/smollm2-135m --out results/studies/gpu

writes ``OUT/figures.json`` (schema ``SCHEMA``) and ``OUT/figures.md``:

- ``tokens_per_s``: our local training (``bench.client.training.train_local`` on the method's trainable
  tensors, batches collated per step, per-example losses) against a plain Hugging Face loop on the
  same model, trainable tensors and batches (pre-collated; ``model(**batch).loss``, a torch
  optimizer): ``ratio`` = ours / plain (goal >= 0.6).
- ``round_ratio``: one round of 8 clients x 10 local steps with ``federation.client_batch: auto``
  (clients trained together) over ``client_batch: 1`` (one after another), per method (goal <= 0.15
  on a GPU); ``available: false`` with the reason when this checkout has no ``client_batch``.
- ``peak_memory_mb``: peak CUDA memory of LoRA and QLoRA training of the same model (study 3).
- ``table4_slice``: the ``gpu`` preset on a slice of Table 4 (``--slice-methods`` x
  ``--slice-defenses``, first seed), run into ``OUT/runs`` with its study report in ``OUT/slice``.

On CUDA every training step runs under bf16 autocast (``bench.client.device.autocast``) with float32 weights;
the slice takes the preset's bfloat16 weights. ``--device cpu`` measures the same on the CPU (the
test runs it on tiny-llama for one step): memory figures are then null (CUDA counters only).

``--model`` is a registered model name (``tiny-llama``, or a model source such as ``smollm2-135m``
where one is registered), a Hugging Face directory, or a GGUF file (or a folder holding one), which
is converted once into an HF directory under the cache (needs the ``gguf`` and ``accelerate`` wheels).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bench.api.files import atomic_write
from bench.api.vocabulary import JsonObject

if TYPE_CHECKING:  # imported where used: the GPU script starts before the heavy layers load
    from bench.client.training import LocalJob
    from bench.engine.runner import Prepared
    from bench.spec.scenario import Scenario

SCHEMA = {
    "schema": int, "command": str, "device": str, "torch": str, "model": dict, "autocast": str, "tokens_per_s": dict,
    "round_ratio": dict, "peak_memory_mb": dict, "table4_slice": dict, "notes": list,
}
"""Top-level keys of ``figures.json`` and their types (a test checks them)."""
TOKENS_GOAL, ROUND_GOAL = 0.6, 0.15
SHARED_MODEL = "../shared/models/smollm2-135m"


def default_model() -> str:
    """SmolLM2-135M: through its registered model source when this checkout has one, else its GGUF folder."""
    from bench.api.registry import MODELS

    return "smollm2-135m" if "smollm2-135m" in MODELS else SHARED_MODEL


# -- the model ------------------------------------------------------------------------------------


def model_component(spec: str, dtype: str = "float32", random_weights: bool = False) -> JsonObject:
    """A scenario's ``model:`` entry for ``spec``: a registered name as is, else an HF directory."""
    from bench.api.registry import MODELS

    if spec in MODELS:
        if random_weights:
            raise SystemExit(f"--random-weights needs an HF directory with a config.json, not the model name {spec}")
        return {"name": spec}
    return {"name": "hf", "params": {"path": hf_directory(spec, random_weights), "dtype": dtype}}


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt")
RANDOM_SEED = 0


def hf_directory(spec: str, random_weights: bool = False) -> str:
    """An HF model directory for ``spec``: itself when it has a config.json (random weights drawn from that
    config when ``random_weights``), else its GGUF file converted."""
    path = Path(spec).expanduser().absolute()
    if (path / "config.json").is_file():
        return with_random_weights(path) if random_weights else str(path)
    ggufs = [path] if path.suffix == ".gguf" else sorted(path.glob("*.gguf")) if path.is_dir() else []
    if not ggufs:
        raise SystemExit(f"--model {spec}: neither a registered model, an HF directory (config.json) nor a GGUF file")
    return convert_gguf(ggufs[0])


def convert_gguf(gguf: Path) -> str:
    """Dequantise a GGUF checkpoint into a float32 HF directory (cached; see ../shared/models/README.md)."""
    from bench.api.memo import cache_root

    target = cache_root() / "models" / f"hf-from-gguf-{gguf.stem}"
    if (target / "done").exists():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf} to an HF directory in {target} (once)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = type(loaded)(loaded.config)  # the loaded one is not serialisable as is: copy into a fresh one
    model.load_state_dict(loaded.state_dict())
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "done").write_text("ok\n")
    return str(target)


def with_random_weights(config_dir: Path) -> str:
    """A copy of ``config_dir`` (config and tokenizer) with weights drawn from the config's initialisation
    (seed ``RANDOM_SEED``), cached. For a machine the pretrained weights cannot reach (the GPU machine
    takes 64 MiB of files; SmolLM2-135M's GGUF is 98 MB): speed and memory depend on the architecture and
    sizes, not on the weights' values; privacy and utility figures of such a model are not findings."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    from bench.api.memo import cache_root

    target = cache_root() / "models" / f"random-weights-{config_dir.name}-seed{RANDOM_SEED}"
    if (target / "done").exists():
        return str(target)
    if any(next(config_dir.glob(pattern), None) for pattern in WEIGHT_FILES):
        print(f"--random-weights: ignoring the weights in {config_dir}", file=sys.stderr)
    with torch.random.fork_rng(devices=[]):  # the initialisation draws from torch's global generator
        torch.manual_seed(RANDOM_SEED)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir), dtype=torch.float32)
    target.mkdir(parents=True, exist_ok=True)
    for item in config_dir.iterdir():
        if item.is_file() and not any(item.match(pattern) for pattern in WEIGHT_FILES):
            shutil.copy2(item, target / item.name)
    model.save_pretrained(target)
    (target / "done").write_text("ok\n")
    return str(target)


def write_architecture(spec: str, target: Path) -> None:
    """The configuration and tokenizer of the GGUF model ``spec`` (a file or a folder holding one), no weights:
    what ``--random-weights`` needs (3.5 MB for SmolLM2-135M against 98 MB of weights)."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(spec).expanduser().absolute()
    ggufs = [path] if path.suffix == ".gguf" else sorted(path.glob("*.gguf")) if path.is_dir() else []
    if not ggufs:
        raise SystemExit(f"--write-architecture: --model {spec} is not a GGUF file or a folder holding one")
    target.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(ggufs[0].parent, gguf_file=ggufs[0].name).save_pretrained(target)
    AutoConfig.from_pretrained(ggufs[0].parent, gguf_file=ggufs[0].name).save_pretrained(target)


# -- scenarios ------------------------------------------------------------------------------------


ROUND_DEFENSES: dict[str, list[JsonObject]] = {"dp-local": [{"name": "dp-local", "params": {"noise_multiplier": 1.0}}]}
"""Defenses a round method may name after ``+`` (``lora+dp-local``: DP-SGD's clients together against Opacus)."""


def scenario(model: JsonObject, device: str, method: str, *, clients: int, steps: int, batch: int,
             max_length: int, extra: JsonObject | None = None) -> Scenario:
    """One round of ``clients`` clients x ``steps`` local steps on a language task (loss on every token);
    ``method`` may name a defense after ``+`` (``ROUND_DEFENSES``)."""
    from bench.spec.scenario import build

    method, _, defense = method.partition("+")
    entry = {"name": f"gpu-figures-{method}", "tier": "open-weight", "model": model, "method": method,
             "defenses": ROUND_DEFENSES[defense] if defense else [],
             "task": {"name": "synthetic-clinical", "params": {"objective": "language", "max_length": max_length}},
             "federation": {"clients": clients, "clients_per_round": clients, "rounds": 1, "local_steps": steps,
                            "batch_size": batch, "lr": 1e-4, "optimizer": "adam",
                            "examples_per_client": max(2 * steps * batch, 8), **(extra or {})},
             "seeds": [0], "device": device}
    return build(entry, entry["name"], str(Path.cwd() / "gpu-figures.yaml"))


def prepared(s: Scenario) -> Prepared:
    from bench.engine.runner import plan, prepare

    return prepare(s, 0, plan(s))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Callable[[], object]) -> float:
    sync(device)
    started = time.perf_counter()
    work()
    sync(device)
    return time.perf_counter() - started


# -- tokens per second: our local training vs a plain Hugging Face loop ----------------------------


def local_job(p: Prepared, steps: int) -> LocalJob:
    from bench.api.seeding import generator
    from bench.client.training import LocalJob

    method, s = p.built.method, p.scenario.federation
    return LocalJob(model=method.model, parameters=[t for _, t in method.named_trainable],
                    examples=p.clients[0].members, collate=p.fed.collate, example_losses=method.example_losses,
                    steps=steps, batch_size=s.batch_size, lr=s.lr, optimizer=s.optimizer,
                    rng=generator("gpu-figures", steps))


def tokens_per_second(model: JsonObject, device: str, method: str, steps: int, batch: int,
                      max_length: int, repeats: int = 3) -> JsonObject:
    """Ours against a plain loop over the same batches: each warmed up on every batch first, then timed
    ``repeats`` times in turn, medians compared. The first GPU measurement (2026-12-04) warmed each up on
    one batch and timed ours first: ours then paid for every new padded shape (allocations, kernels) that
    the plain loop found ready, and read 0.35 while the same steps inside a round ran at the plain pace."""
    from bench.client.device import autocast
    from bench.client.training import train_local

    s = scenario(model, device, method, clients=1, steps=steps, batch=batch, max_length=max_length)
    ours = prepared(s)
    where = ours.device
    warm = local_job(ours, steps)  # every later job draws these batches again (same generator seed)
    train_local(warm)
    batches = [ours.fed.collate([warm.examples[i] for i in indices]) for indices in warm.seen]
    tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))

    plain = prepared(s)  # a fresh copy of the same model and trainable tensors
    model_, parameters = plain.built.method.model, [t for _, t in plain.built.method.named_trainable]
    optimizer = torch.optim.Adam(parameters, lr=s.federation.lr)

    def plain_loop(chosen: list[dict[str, torch.Tensor]]) -> None:
        model_.train()
        for b in chosen:
            optimizer.zero_grad(set_to_none=True)
            with autocast(where):
                loss = model_(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
            loss.backward()
            optimizer.step()

    plain_loop(batches)  # the same warm-up
    ours_s, plain_s = [], []
    for _ in range(repeats):
        ours_s.append(timed(where, functools.partial(train_local, local_job(ours, steps))))
        plain_s.append(timed(where, functools.partial(plain_loop, batches)))
    ours_median, plain_median = statistics.median(ours_s), statistics.median(plain_s)
    return {"method": method, "steps": steps, "batch": batch, "max_length": max_length, "tokens": tokens,
            "repeats": repeats, "ours_s": ours_s, "plain_s": plain_s,
            "ours": tokens / ours_median, "plain_hf": tokens / plain_median, "ratio": plain_median / ours_median,
            "goal": TOKENS_GOAL, "meets_goal": plain_median / ours_median >= TOKENS_GOAL}


# -- batched vs sequential clients -----------------------------------------------------------------


def client_batch_available() -> bool:
    from bench.spec.scenario import Federation

    return "client_batch" in {f.name for f in dataclasses.fields(Federation)}


def round_seconds(model: JsonObject, device: str, method: str, clients: int, steps: int, batch: int,
                  max_length: int, client_batch: int | str) -> float:
    from bench.engine import federation as fl

    s = scenario(model, device, method, clients=clients, steps=steps, batch=batch, max_length=max_length,
                 extra={"client_batch": client_batch})
    p = prepared(s)
    return timed(p.device, lambda: fl.run(p.fed, p.transcript, p.truth))


def round_ratio(model: JsonObject, device: str, methods: list[str], clients: int, steps: int, batch: int,
                max_length: int) -> JsonObject:
    if not client_batch_available():
        return {"available": False, "goal": ROUND_GOAL, "methods": {},
                "note": "federation.client_batch does not exist in this checkout (batched client training, "
                        "issue 16 item 1, is not merged): nothing to compare"}
    out: JsonObject = {"available": True, "goal": ROUND_GOAL, "clients": clients, "local_steps": steps,
                           "methods": {}}
    for method in methods:
        args = (model, device, method, clients, steps, batch, max_length)
        round_seconds(*args, 1)  # warm-up (first CUDA kernels, autotuning)
        sequential = round_seconds(*args, 1)
        batched = round_seconds(*args, "auto")
        out["methods"][method] = {"sequential_s": sequential, "batched_s": batched, "ratio": batched / sequential,
                                  "meets_goal": batched / sequential <= ROUND_GOAL}
    return out


# -- QLoRA vs LoRA peak memory ----------------------------------------------------------------------


def peak_memory(model: JsonObject, device: str, steps: int, batch: int, max_length: int) -> JsonObject:
    from bench.client.training import train_local

    if not device.startswith("cuda"):
        return {"lora": None, "qlora": None, "ratio": None, "note": "CUDA only (peak allocator counters)"}
    out: JsonObject = {}
    for method in ("lora", "qlora"):
        p = prepared(scenario(model, device, method, clients=1, steps=steps, batch=batch, max_length=max_length))
        torch.cuda.synchronize(p.device)
        resident = torch.cuda.memory_allocated(p.device) / 2**20
        torch.cuda.reset_peak_memory_stats(p.device)
        train_local(local_job(p, steps))
        out[method] = torch.cuda.max_memory_allocated(p.device) / 2**20
        out[f"{method}_resident"] = resident
        del p
        torch.cuda.empty_cache()
    out["ratio"] = out["qlora"] / out["lora"]
    out["note"] = "peak CUDA memory during local training (weights resident + activations + optimizer)"
    return out


# -- the gpu preset on a slice of Table 4 ------------------------------------------------------------


def slice_model_dir(model: JsonObject) -> str:
    """The directory the gpu preset's ``hf`` model loads (``TIERBENCH_GPU_MODEL``): a registered source's own."""
    from bench.api.registry import MODELS

    if model["name"] == "hf":
        return model["params"]["path"]
    source = MODELS.get(model["name"])
    return source(source.Config()).path()


def table4_slice(model_dir: str | None, out: Path, methods: list[str], defenses: list[str], limit: int,
                 command: str) -> JsonObject:
    from bench.engine.sweep import planned_runs, summarize, sweep
    from bench.reporting.report import write_study_report
    from bench.spec.presets import apply
    from bench.spec.scenario import load

    if limit == 0:
        return {"runs": 0, "note": "skipped (--slice-runs 0)"}
    if model_dir:
        os.environ["TIERBENCH_GPU_MODEL"] = model_dir
    chosen = [s for s in apply(load(Path(__file__).resolve().parents[2] / "scenarios" / "table4.yaml"), "gpu")
              if s.method.name in methods and s.defense_label in defenses][:limit]
    runs_dir = out / "runs"
    started = time.perf_counter()
    store = sweep(chosen, runs_dir, seeds=1, show_progress=False)
    wall = time.perf_counter() - started
    summary = summarize(store, planned_runs(chosen, store, 1))
    write_study_report(runs_dir, out / "slice", command)
    return {"runs": len(chosen), "counts": summary.counts, "failed": summary.failed, "wall_s": wall,
            "methods": methods, "defenses": defenses, "model": os.environ.get("TIERBENCH_GPU_MODEL", ""),
            "scenarios": [s.name for s in chosen]}


# -- output ---------------------------------------------------------------------------------------


def describe_device(device: str) -> str:
    from bench.client.device import describe

    return describe(torch.device(device)) if device.startswith("cuda") else f"cpu ({platform.processor() or 'cpu'})"


def markdown(figures: JsonObject) -> str:
    """The figures measured so far as a table (a part not yet measured is absent from ``figures``)."""
    lines = [f"# GPU figures ({figures['device']}, torch {figures['torch']}, autocast {figures['autocast']})", "",
             f"Command: `{figures['command']}`", "", "| figure | value | goal |", "| --- | --- | --- |"]
    t = figures.get("tokens_per_s")
    if t:
        lines += [f"| tokens/s, ours ({t['method']}) | {t['ours']:.0f} | |",
                  f"| tokens/s, plain HF loop | {t['plain_hf']:.0f} | |",
                  f"| ours / plain HF | {t['ratio']:.2f} | >= {t['goal']} |"]
    r = figures.get("round_ratio")
    for method, values in (r or {}).get("methods", {}).items():
        lines.append(f"| batched / sequential round, {method} | {values['ratio']:.3f} "
                     f"({values['batched_s']:.2f} s / {values['sequential_s']:.2f} s) | <= {r['goal']} |")
    if r and not r["available"]:
        lines.append(f"| batched / sequential round | not measured: {r['note']} | <= {r['goal']} |")
    m = figures.get("peak_memory_mb")
    if m and m.get("lora") is not None:
        lines.append(f"| peak memory LoRA / QLoRA | {m['lora']:.0f} MiB / {m['qlora']:.0f} MiB (ratio {m['ratio']:.2f}) | |")
    sliced = figures.get("table4_slice")
    if sliced and sliced.get("runs"):
        lines.append(f"| Table 4 slice (gpu preset) | {sliced['runs']} runs, {sliced['counts']}, "
                     f"{sliced['wall_s']:.0f} s | |")
    lines += ["", "Notes:"] + [f"- {n}" for n in figures["notes"]]
    return "\n".join(lines) + "\n"


def write(out: Path, figures: JsonObject) -> None:
    """figures.json and figures.md, replaced whole (the script writes after each part, so a run stopped
    at its time limit keeps the parts it measured)."""
    atomic_write(out / "figures.json", json.dumps(figures, indent=2, sort_keys=True) + "\n")
    atomic_write(out / "figures.md", markdown(figures))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/studies/gpu")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--model", default=None,
                   help="registered model name, HF directory, or GGUF file / folder (default: the smollm2-135m "
                        f"model source where one is registered, else {SHARED_MODEL})")
    p.add_argument("--method", default="lora", help="method of the tokens/s comparison")
    p.add_argument("--steps", type=int, default=20, help="local steps timed for tokens/s and peak memory")
    p.add_argument("--repeats", type=int, default=3, help="timings of each loop for tokens/s (medians compared)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--clients", type=int, default=8, help="clients of the batched-vs-sequential round")
    p.add_argument("--local-steps", type=int, default=10, help="local steps of the batched-vs-sequential round")
    p.add_argument("--round-methods", nargs="+", default=["lora", "fft", "lora+dp-local"],
                   help=f"methods of the batched-vs-sequential round; METHOD+DEFENSE with a defense of {sorted(ROUND_DEFENSES)}")
    p.add_argument("--slice-methods", nargs="+", default=["lora", "fft"])
    p.add_argument("--slice-defenses", nargs="+", default=["none", "dp-local", "secagg"])
    p.add_argument("--slice-runs", type=int, default=6, help="at most this many Table 4 runs (0: skip the slice)")
    p.add_argument("--under-load", action="store_true", help="say in the figures that times were taken under load")
    p.add_argument("--write-architecture", metavar="DIR", default=None,
                   help="write the configuration and tokenizer of the GGUF --model into DIR and stop")
    p.add_argument("--random-weights", action="store_true",
                   help="--model is an HF directory whose config (and tokenizer) is used with weights drawn at seed 0: "
                        "speed and memory figures only (with_random_weights)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from bench.engine.sweep import quiet_libraries

    quiet_libraries()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.tools.gpu_figures " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.write_architecture:
        write_architecture(args.model or SHARED_MODEL, Path(args.write_architecture))
        return 0
    args.model = args.model or default_model()
    model = model_component(args.model, random_weights=args.random_weights)
    on_gpu = args.device.startswith("cuda")
    notes = ["times taken under load: compare ratios only" if args.under_load else "times taken on an idle machine"]
    if "hf-from-gguf" in str(model):
        notes.append("weights dequantised from a 4-bit GGUF file: a real pretrained model, not the original bf16 one")
    if args.random_weights:
        notes.append(f"weights drawn at random (seed {RANDOM_SEED}) from the configuration in {args.model}: speed and "
                     "memory figures hold for the architecture; the slice's privacy and utility figures are not findings")
    figures: JsonObject = {
        "schema": 1, "command": command, "device": describe_device(args.device), "torch": torch.__version__,
        "model": {"spec": args.model, **model}, "autocast": "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "off",
        "notes": notes,
    }
    parts: list[tuple[str, Callable[[], JsonObject]]] = [
        ("tokens_per_s", lambda: tokens_per_second(model, args.device, args.method, args.steps, args.batch,
                                                   args.max_length, args.repeats)),
        ("round_ratio", lambda: round_ratio(model, args.device, args.round_methods, args.clients, args.local_steps,
                                            args.batch, args.max_length)),
        ("peak_memory_mb", lambda: peak_memory(model, args.device, args.steps, args.batch, args.max_length)),
        ("table4_slice", lambda: table4_slice(slice_model_dir(model) if on_gpu else None, out, args.slice_methods,
                                              args.slice_defenses, args.slice_runs if on_gpu else 0, command)),
    ]
    for key, measure in parts:
        print(f"measuring {key}", file=sys.stderr, flush=True)
        figures[key] = measure()
        write(out, figures)
    print(markdown(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
