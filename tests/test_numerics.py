"""One CPU kernel path for every run (``bench.api.numerics``): importing ``bench`` pins AVX2 where the processor
has it, a run's provenance names the path, and a zoo model cached on another path is pretrained again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import scenario_dict, write_scenario

from bench import cli
from bench.api import numerics
from bench.api.registry import MODELS
from bench.store.provenance import package_versions
from bench.tools import kernel_fingerprint
from bench.world.models import KERNELS_FILE

ROOT = Path(__file__).resolve().parents[1]
needs_avx2 = pytest.mark.skipif(not numerics._has_avx2(), reason="the pin applies to x86 processors with AVX2")


def _in_fresh_process(code: str, **env: str) -> str:
    """stdout of ``code`` run after ``import bench`` in a new interpreter, none of the pinned variables inherited."""
    clean = {k: v for k, v in os.environ.items() if k not in {numerics.VARIABLE, *numerics.LIBRARIES}}
    out = subprocess.run([sys.executable, "-c", f"import bench; {code}"], env={**clean, **env}, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def _kernels_in_fresh_process(**env: str) -> str:
    return _in_fresh_process("import torch; print(torch.backends.cpu.get_cpu_capability())", **env)


@needs_avx2
def test_importing_bench_pins_the_avx2_kernels_before_torch_picks_its_own():
    assert _kernels_in_fresh_process() == "AVX2"
    assert numerics.cpu_kernels() == "AVX2"  # this test process too (conftest imports bench first)


def test_a_kernel_path_the_user_chose_is_kept():
    assert _kernels_in_fresh_process(ATEN_CPU_CAPABILITY="default") == "DEFAULT"


def _library_pins(**env: str) -> list[str]:
    code = f"import json, os; print(json.dumps([os.environ.get(k) for k in {sorted(numerics.LIBRARIES)!r}]))"
    return json.loads(_in_fresh_process(code, **env))


@needs_avx2
def test_mkl_and_onednn_are_pinned_with_pytorch_unless_the_user_chose_a_path():
    assert _library_pins() == ["AVX2", "AVX2"]
    assert _library_pins(MKL_CBWR="COMPATIBLE") == ["AVX2", "COMPATIBLE"]  # sorted: DNNL_MAX_CPU_ISA, MKL_CBWR
    assert _library_pins(ATEN_CPU_CAPABILITY="avx512") == [None, None]


def test_a_runs_provenance_names_its_kernel_path():
    assert package_versions().endswith(f" cpu_kernels={numerics.cpu_kernels()}")


def _small_zoo_model():
    zoo = MODELS.get("tiny-gpt2")
    return zoo(zoo.Config(hidden=16, layers=1, heads=2, vocab=300, context=32, pretrain_steps=3, pretrain_batch=2,
                          corpus_documents=40))


@pytest.mark.parametrize("recorded", ["SOME_OTHER_PATH", None], ids=["other path", "not recorded (before session 28)"])
def test_a_zoo_model_cached_on_another_kernel_path_is_pretrained_again(tmp_path, monkeypatch, capfd, recorded):
    monkeypatch.setenv("TIERBENCH_CACHE", str(tmp_path))
    model = _small_zoo_model()
    path = Path(model.path())
    assert (path / KERNELS_FILE).read_text().strip() == numerics.cpu_kernels()
    fresh = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(b"weights summed on another path")
    if recorded is None:
        (path / KERNELS_FILE).unlink()
    else:
        (path / KERNELS_FILE).write_text(recorded + "\n")
    capfd.readouterr()

    assert Path(model.path()) == path
    assert "pretraining zoo model tiny-gpt2 again" in capfd.readouterr().err
    assert (path / "model.safetensors").read_bytes() == fresh  # rebuilt, and as a first build makes it
    assert (path / KERNELS_FILE).read_text().strip() == numerics.cpu_kernels()
    assert sorted(p.name for p in tmp_path.joinpath("models").iterdir()) == [path.name]  # nothing left aside

    model.path()
    assert "pretraining" not in capfd.readouterr().err  # same path: the cache is used
    assert model.metadata()["weights"].endswith(f"({numerics.cpu_kernels()} kernels)")


# The AVX2 build of Table 4's zoo model (tiny-gpt2, default config): the weights of the published runs made on
# the AVX2 path (results/studies/kernel-paths/: table4-inversion's learned-inversion rows, every seed added since
# session 22, the membership studies). Session 28 reran mia-server's fft cell, seed 0, with them on an AVX-512
# machine pinned to AVX2 and got the stored figures bit for bit (base perplexity 3.6888359540951425, accuracy
# 0.8046875, mia-reference AUC 0.59175, mia-calibrated 0.545, mia-gradient 0.64371875). The AVX-512 build (digest
# 6da965f9282e1d54) is the one session 19's `make bench` measured table4.yaml on.
PUBLISHED_AVX2_TINY_GPT2 = "sha256 3a27e217aaaf4206 (AVX2 kernels)"


@needs_avx2
def test_the_default_zoo_model_is_the_avx2_build_the_published_avx2_runs_used():
    """Fails when the packages or the kernel path change the pretrained weights: those published runs would no
    longer rerun bit for bit (the default suite builds this model for its smoke scenarios anyway)."""
    zoo = MODELS.get("tiny-gpt2")
    assert numerics.cpu_kernels() == "AVX2"
    assert zoo(zoo.Config()).metadata()["weights"] == PUBLISHED_AVX2_TINY_GPT2
    assert torch.__version__.startswith("2.13.0")


def test_the_fingerprint_tool_tells_this_paths_runs_from_another_paths(tmp_path, capsys):
    """A run made here reads ``same``; a stored base perplexity from other weights reads ``differs`` and makes
    its (file, method, task, seed) group a mixed one."""
    document = scenario_dict(federation={"rounds": 1, "local_steps": 1, "clients": 2, "clients_per_round": 2},
                             matrix={"defenses": [[], [{"name": "dp-central", "params": {"noise_multiplier": 0.5}}]]})
    scenario = write_scenario(tmp_path, document)
    assert cli.main(["run", str(scenario), "--out", str(tmp_path / "store"), "--executor", "serial", "--quiet"]) == 0
    capsys.readouterr()
    assert kernel_fingerprint.main([str(tmp_path / "store"), str(scenario)]) == 0
    out = capsys.readouterr().out
    assert "more than one base model: 0 of 1" in out and "| same |" in out and "differs" not in out

    log = tmp_path / "store" / "results.jsonl"
    lines = log.read_text().splitlines()
    moved = []
    for line in lines:  # the dp-central cell's base perplexity, as if it had run on other weights
        record = json.loads(line)
        for row in record.get("rows", []):
            if row["metric"] == "model.base_perplexity" and row["defenses"] != "none":
                row["value"] += 0.01
        moved.append(json.dumps(record))
    log.write_text("\n".join(moved) + "\n")
    assert kernel_fingerprint.main([str(tmp_path / "store"), str(scenario), "--per-commit", "2"]) == 0
    out = capsys.readouterr().out
    assert "more than one base model: 1 of 1" in out and "| same |" in out and "| differs |" in out

    assert kernel_fingerprint.main([str(tmp_path / "store"), str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
