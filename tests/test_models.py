"""The zoo and the Hugging Face path: one loading code for both."""

import dataclasses

import torch

from bench.api.config import bind
from bench.engine.runner import execute
from bench.world.models import HuggingFaceModel, TinyGPT2, TinyLlama
from tests.helpers import make_scenario


def test_zoo_models_are_small_pretrained_and_cached():
    for cls in (TinyGPT2, TinyLlama):
        source = cls(bind(cls.Config, {}, file=None, key="model"))
        assert source.path() == source.path()  # cached by config hash
        model, tokenizer = source.load("language", 0, torch.device("cpu"), 0)
        params = sum(p.numel() for p in model.parameters())
        assert 0.5e6 < params < 5e6
        assert tokenizer.eos_token_id < model.config.vocab_size and tokenizer.pad_token_id < model.config.vocab_size
        batch = tokenizer(["Patient Alice Adams, MRN 123456, age 40, seen on 2026-01-02 with a mild fever."],
                          return_tensors="pt")
        loss = model(**batch, labels=batch["input_ids"]).loss
        assert float(loss) < 4.0, "pretraining should have taught the template (random init is ~7.6 nats)"
        meta = source.metadata()
        assert meta["openness"] == "open-source" and meta["license"]


def test_pretraining_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERBENCH_CACHE", str(tmp_path / "a"))
    config = dataclasses.replace(bind(TinyLlama.Config, {}, file=None, key="m"), pretrain_steps=3, corpus_documents=60,
                                 hidden=32, layers=1, heads=2, vocab=300)
    first = TinyLlama(config).load("language", 0, torch.device("cpu"), 0)[0].state_dict()
    monkeypatch.setenv("TIERBENCH_CACHE", str(tmp_path / "b"))
    second = TinyLlama(config).load("language", 0, torch.device("cpu"), 0)[0].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_model_saved_to_a_directory_runs_through_the_hf_path(tmp_path):
    zoo = TinyGPT2(bind(TinyGPT2.Config, {}, file=None, key="model"))
    model, tokenizer = zoo.load("language", 0, torch.device("cpu"), 0)
    saved = tmp_path / "my-model"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    hf = HuggingFaceModel(bind(HuggingFaceModel.Config, {"path": str(saved)}, file=None, key="model"))
    reloaded, _ = hf.load("language", 0, torch.device("cpu"), 0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    scenario = make_scenario(tmp_path, model={"name": "hf", "params": {"path": str(saved)}},
                             federation={"rounds": 1, "local_steps": 1})
    rows = execute(scenario, 0)
    assert {r.status for r in rows} == {"ok"} and "utility.accuracy" in {r.metric for r in rows}


def test_bf16_autocast_only_where_the_device_supports_it(monkeypatch):
    import contextlib

    from bench.client.device import autocast

    assert isinstance(autocast(torch.device("cpu")), contextlib.nullcontext)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    context = autocast(torch.device("cuda"))
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert isinstance(autocast(torch.device("cuda")), contextlib.nullcontext)
