"""bench/tools/gpu_figures.py (what bench/tools/gpu_check.sh runs on a GPU) runs on the CPU on tiny-llama for one
step and writes figures of the documented schema."""

from __future__ import annotations

import json

from bench.tools import gpu_figures


def test_cpu_run_writes_every_figure_of_the_schema(tmp_path, capsys):
    out = tmp_path / "gpu"
    assert gpu_figures.main(["--device", "cpu", "--model", "tiny-llama", "--steps", "1", "--batch", "2",
                             "--max-length", "16", "--clients", "2", "--local-steps", "1", "--round-methods", "lora", "lora+dp-local",
                             "--out", str(out), "--under-load"]) == 0
    figures = json.loads((out / "figures.json").read_text())
    assert {key: type(figures[key]) for key in gpu_figures.SCHEMA} == gpu_figures.SCHEMA
    tokens = figures["tokens_per_s"]
    assert tokens["tokens"] > 0 and tokens["ours"] > 0 and tokens["plain_hf"] > 0
    assert abs(tokens["ratio"] - tokens["ours"] / tokens["plain_hf"]) < 1e-9 and tokens["goal"] == 0.6
    rounds = figures["round_ratio"]
    if rounds["available"]:
        for method in ("lora", "lora+dp-local"):
            assert rounds["methods"][method]["batched_s"] > 0 and rounds["methods"][method]["sequential_s"] > 0
    else:
        assert "client_batch" in rounds["note"]
    assert figures["peak_memory_mb"]["lora"] is None and "CUDA" in figures["peak_memory_mb"]["note"]
    assert figures["table4_slice"]["runs"] == 0 and figures["autocast"] == "off"
    assert any("under load" in note for note in figures["notes"])
    assert "tokens/s" in (out / "figures.md").read_text()


def test_a_model_spec_that_is_neither_name_directory_nor_gguf_is_refused(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="neither a registered model"):
        gpu_figures.model_component(str(tmp_path / "nothing"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert gpu_figures.model_component(str(tmp_path / "hf"))["params"]["path"] == str(tmp_path / "hf")
    assert gpu_figures.model_component("tiny-llama") == {"name": "tiny-llama"}
