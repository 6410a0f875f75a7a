"""Same scenario and seed -> identical metrics, also where a real model draws random numbers itself
(dropout > 0) and where a defense encrypts (CKKS noise); and a run leaves torch's global RNG alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.api.seeding import isolated_rng
from bench.engine.runner import execute
from bench.world import synthetic
from bench.world.models import train_tokenizer
from tests.helpers import make_scenario

TINY = {"clients": 2, "clients_per_round": 2, "rounds": 2, "local_steps": 2, "batch_size": 4,
        "examples_per_client": 8}


def save_dropout_gpt2(directory: Path, dropout: float = 0.1) -> Path:
    """A tiny GPT-2-style Hugging Face model with dropout on residuals, attention and embeddings,
    saved with its tokenizer as any downloaded model would be."""
    from transformers import GPT2Config, GPT2LMHeadModel

    corpus = synthetic.pretraining_corpus(60, torch.Generator().manual_seed(0))
    tokenizer = train_tokenizer(corpus, 400)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=96,
                        resid_pdrop=dropout, attn_pdrop=dropout, embd_pdrop=dropout,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    with isolated_rng(0):
        model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def measured(rows: list) -> dict[tuple[str, str], float | None]:
    """Every metric except wall-clock seconds and memory peaks (machine measurements, not results)."""
    assert rows and {r.status for r in rows} == {"ok"}, [(r.status, r.error) for r in rows]
    return {(r.attack, r.metric): r.value for r in rows
            if not (r.metric.endswith("_s") or r.metric.endswith("mem_mb"))}


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory) -> Path:
    return save_dropout_gpt2(tmp_path_factory.mktemp("gpt2-dropout"))


CASES = {
    "fft": {"method": "fft", "attacks": ["mia-loss"]},
    "lora+lira-shadows": {"method": "lora", "attacks": ["mia-loss", {"name": "mia-lira", "params": {"shadows": 2, "online": False}}]},
    "fft+dp-local": {"method": "fft", "attacks": ["mia-loss"],
                     "defenses": [{"name": "dp-local", "params": {"noise_multiplier": 0.5}}]},
}


@pytest.mark.parametrize("case", CASES)
def test_a_saved_hf_model_with_dropout_gives_identical_metrics_on_rerun(tmp_path, dropout_model, case):
    """Dropout in local training, in shadow training and inside DP-SGD all draw from the run's seed;
    and the run leaves torch's global generator as it found it."""
    scenario = make_scenario(tmp_path, model={"name": "hf", "params": {"path": str(dropout_model)}},
                             task={"name": "synthetic-clinical", "params": {"objective": "language", "max_length": 40}},
                             federation={**TINY, "lr": 0.01}, **CASES[case])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = measured(execute(scenario, 0))
    assert torch.equal(torch.get_rng_state(), before), "a run consumed or reseeded torch's global generator"
    second = measured(execute(scenario, 0))
    assert ("mia-loss", "mia.auc") in first
    assert case != "lora+lira-shadows" or ("mia-lira", "mia.auc") in first
    assert case != "fft+dp-local" or any(metric.startswith("dp.epsilon") for _, metric in first)
    assert first == second


def test_dropout_is_active_so_the_test_above_can_fail(dropout_model):
    """The model really draws dropout masks in training mode (else rerun equality proves nothing)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(dropout_model).train()
    ids = torch.arange(12).unsqueeze(0)
    assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_a_run_does_not_depend_on_the_global_torch_rng(tmp_path, dropout_model):
    scenario = make_scenario(tmp_path, model={"name": "hf", "params": {"path": str(dropout_model)}},
                             task={"name": "synthetic-clinical", "params": {"objective": "language", "max_length": 40}},
                             method="fft", federation={**TINY, "rounds": 1}, attacks=["mia-loss"])
    torch.manual_seed(123)
    first = measured(execute(scenario, 0))
    torch.manual_seed(456)
    assert measured(execute(scenario, 0)) == first


def test_he_reruns_give_identical_precision_loss_and_metrics(tmp_path):
    pytest.importorskip("tenseal")
    scenario = make_scenario(tmp_path, method="lora", defenses=["he"], attacks=["mia-loss"],
                             federation={**TINY, "rounds": 2, "optimizer": "adam", "lr": 0.01})
    before = torch.get_rng_state()
    first = measured(execute(scenario, 0))
    assert torch.equal(torch.get_rng_state(), before)
    second = measured(execute(scenario, 0))
    assert first[("none", "cost.he.precision_loss")] > 0  # the noise is there, and it is the same
    assert first == second
