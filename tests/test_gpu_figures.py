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
    assert tokens["repeats"] == 3 and len(tokens["ours_s"]) == len(tokens["plain_s"]) == 3
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


def test_random_weights_are_drawn_from_the_config_at_a_fixed_seed_without_touching_the_global_generator(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    monkeypatch.setenv("TIERBENCH_CACHE", str(tmp_path / "cache"))
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    (tmp_path / "arch").mkdir()
    config.save_pretrained(tmp_path / "arch")
    (tmp_path / "arch" / "tokenizer.json").write_text("{}")
    before = torch.random.get_rng_state()
    path = gpu_figures.hf_directory(str(tmp_path / "arch"), random_weights=True)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert gpu_figures.hf_directory(str(tmp_path / "arch"), random_weights=True) == path  # cached
    assert (tmp_path / "cache" / "models").exists() and path.startswith(str(tmp_path / "cache"))
    assert (json.loads((tmp_path / "arch" / "tokenizer.json").read_text()) == {}) and (
        (tmp_path / "cache" / "models" / path.rsplit("/", 1)[-1] / "tokenizer.json").is_file())
    torch.manual_seed(gpu_figures.RANDOM_SEED)
    expected = AutoModelForCausalLM.from_config(config)
    drawn = AutoModelForCausalLM.from_pretrained(path)
    assert all(torch.equal(a, b) for a, b in zip(expected.state_dict().values(), drawn.state_dict().values()))
    assert gpu_figures.model_component(str(tmp_path / "arch"), random_weights=True)["params"]["path"] == path
    import pytest

    with pytest.raises(SystemExit, match="random-weights needs an HF directory"):
        gpu_figures.model_component("tiny-llama", random_weights=True)


def test_figures_measured_so_far_are_written_whole(tmp_path):
    figures = {"device": "cpu", "torch": "x", "autocast": "off", "command": "c", "notes": ["n"],
               "tokens_per_s": {"method": "lora", "ours": 10.0, "plain_hf": 20.0, "ratio": 0.5, "goal": 0.6}}
    gpu_figures.write(tmp_path, figures)
    assert json.loads((tmp_path / "figures.json").read_text()) == figures
    text = (tmp_path / "figures.md").read_text()
    assert "| ours / plain HF | 0.50 | >= 0.6 |" in text and "batched" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures.json", "figures.md"]
