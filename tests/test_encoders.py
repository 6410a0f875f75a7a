"""Real models beyond decoders: a BERT-family encoder (the all-MiniLM-L6-v2 shape) through the ``hf``
source. LoRA and adapters find its layers; an architecture peft does not know, or a layer name that
does not exist, is refused with the layers the model has; an encoder is refused for generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.api.config import bind
from bench.api.errors import UserError
from bench.api.registry import METHODS
from bench.api.seeding import isolated_rng
from bench.engine.runner import execute, plan, prepare
from bench.world import synthetic
from bench.world.models import HuggingFaceModel
from tests.helpers import make_scenario

MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
          "max_position_embeddings": 512}
"""sentence-transformers/all-MiniLM-L6-v2's shape (its 30522-token vocabulary aside)."""
TINY = {"clients": 2, "clients_per_round": 2, "rounds": 1, "local_steps": 1, "batch_size": 4, "examples_per_client": 8}
CLASSIFY = {"name": "synthetic-clinical", "params": {"num_classes": 3, "max_length": 40}}


def wordpiece_tokenizer(vocab_size: int = 600):
    """A BERT-style tokenizer ([CLS] text [SEP], WordPiece) trained on the generated corpus."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    core = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.train_from_iterator(synthetic.pretraining_corpus(60, torch.Generator().manual_seed(0)),
                             trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False))
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[(t, core.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def save_encoder(directory: Path, config_class: str = "BertConfig", model_class: str = "BertModel", **sizes) -> Path:
    import transformers

    tokenizer = wordpiece_tokenizer()
    config = getattr(transformers, config_class)(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **sizes)
    with isolated_rng(0):
        model = getattr(transformers, model_class)(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> Path:
    return save_encoder(tmp_path_factory.mktemp("minilm"), **MINILM)


@pytest.fixture(scope="module")
def distilbert(tmp_path_factory) -> Path:
    """peft has no default LoRA layers for DistilBERT (q_lin/k_lin/v_lin): an 'unknown' architecture."""
    return save_encoder(tmp_path_factory.mktemp("distilbert"), "DistilBertConfig", "DistilBertModel",
                        dim=64, hidden_dim=128, n_layers=2, n_heads=2)


def hf(path: Path) -> dict:
    return {"name": "hf", "params": {"path": str(path)}}


def source(path: Path) -> HuggingFaceModel:
    return HuggingFaceModel(bind(HuggingFaceModel.Config, {"path": str(path)}, file=None, key="model"))


def method(name: str, **params):
    cls = METHODS.get(name)
    return cls(bind(cls.Config, params, file=None, key="method"))


@pytest.mark.parametrize(("name", "params"), [("lora", {}), ("lora", {"target": "all"}), ("adapter", {}), ("fft", {})])
def test_methods_train_a_minilm_shaped_bert_loaded_through_hf(tmp_path, minilm, name, params):
    scenario = make_scenario(tmp_path, model=hf(minilm), task=CLASSIFY, method={"name": name, "params": params},
                             federation=TINY)
    rows = execute(scenario, 0)
    assert {r.status for r in rows} == {"ok"}, [r.error for r in rows]
    assert "utility.accuracy" in {r.metric for r in rows}


def test_lora_on_bert_adapts_query_and_value_and_the_head(tmp_path, minilm):
    scenario = make_scenario(tmp_path, model=hf(minilm), task=CLASSIFY, method="lora", federation=TINY)
    names = [n for n, _ in prepare(scenario, 0, plan(scenario)).built.method.named_trainable]
    lora = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names if ".lora_" in n}
    assert lora == {"query", "value"}
    assert sum(".lora_" in n for n in names) == 2 * 2 * MINILM["num_hidden_layers"]  # A and B, two layers, each block
    assert any("classifier" in n for n in names)


def test_adapters_on_bert_sit_before_the_residual_of_both_sublayers(tmp_path, minilm):
    scenario = make_scenario(tmp_path, model=hf(minilm), task=CLASSIFY, method="adapter", federation=TINY)
    model = prepare(scenario, 0, plan(scenario)).built.method.model
    block = model.bert.encoder.layer[0]
    assert block.attention.output.dense._forward_hooks and block.output.dense._forward_hooks
    assert not block.attention._forward_hooks  # BertAttention's output already includes the residual


def test_a_scenario_names_the_lora_layers(tmp_path, minilm):
    scenario = make_scenario(tmp_path, model=hf(minilm), task=CLASSIFY, federation=TINY,
                             method={"name": "lora", "params": {"target_modules": ["query", "key", "value"]}})
    names = [n for n, _ in prepare(scenario, 0, plan(scenario)).built.method.named_trainable]
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names if ".lora_" in n} == {"query", "key", "value"}


def test_a_layer_name_that_matches_nothing_is_refused_with_the_layers_there_are(minilm):
    reason = method("lora", target_modules=["q_proj"]).check_model(source(minilm).architecture(), "classification")
    assert reason and "q_proj" in reason and "self.query" in reason and "intermediate.dense" in reason


def test_an_architecture_peft_does_not_know_is_refused_before_loading_listing_its_layers(tmp_path, distilbert):
    architecture = source(distilbert).architecture()
    for name in ("lora", "qlora"):
        reason = method(name).check_model(architecture, "classification")
        assert reason and "distilbert" in reason and "target_modules" in reason
        assert all(layer in reason for layer in ("attention.q_lin", "attention.v_lin", "ffn.lin1"))
    assert method("lora", target_modules=["q_lin", "v_lin"]).check_model(architecture, "classification") is None
    assert method("adapter").check_model(architecture, "classification") is None  # attention / ffn
    assert method("fft").check_model(architecture, "classification") is None
    scenario = make_scenario(tmp_path, model=hf(distilbert), task=CLASSIFY, method="lora", federation=TINY)
    (row,) = execute(scenario, 0)  # and at run time the run fails with the same reason, not peft's
    assert row.status == "failed" and "target_modules" in row.error and "q_lin" in row.error


def test_adapters_refuse_a_block_without_the_sublayers_naming_its_modules(distilbert):
    reason = method("adapter", sublayers=["mlp"]).check_model(source(distilbert).architecture(), "classification")
    assert reason and "TransformerBlock" in reason and "ffn" in reason and "sublayers" in reason


@pytest.mark.parametrize("kind", ["language", "instruction"])
def test_an_encoder_is_refused_for_a_generative_task_by_name(minilm, kind):
    model = source(minilm)
    reason = model.check_task(kind)
    assert reason and "encoder-only" in reason and "bert" in reason and str(minilm) in reason
    assert model.check_task("classification") is None
    with pytest.raises(ValueError, match="encoder-only"):
        model.load(kind, 0, torch.device("cpu"), 0)


def test_an_unreadable_model_path_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(UserError, match="no-such-model"):
        source(tmp_path / "no-such-model").architecture()


def test_a_decoder_passes_every_check(tmp_path):
    from tests.test_determinism import save_dropout_gpt2

    gpt2 = source(save_dropout_gpt2(tmp_path / "gpt2", dropout=0.0))
    assert gpt2.check_task("language") is None
    for name in ("lora", "adapter", "qlora"):
        assert method(name).check_model(gpt2.architecture(), "language") is None, name


@pytest.mark.parametrize("task, method, key", [
    ("synthetic-instructions", "lora", "model"),  # an encoder cannot generate
    ("{name: synthetic-clinical, params: {num_classes: 3, max_length: 40}}", "{name: lora, params: {target_modules: [no_such_layer]}}", "method"),
])
def test_validate_refuses_what_cannot_work_on_an_encoder(tmp_path, capsys, minilm, task, method, key):
    """The checks run at ``validate`` (exit 2 naming the file and the key), before any weights load."""
    from bench.cli import main

    scenario = tmp_path / "enc.yaml"
    scenario.write_text(f"name: enc\ntier: open-weight\nmodel: {{name: hf, params: {{path: '{minilm}'}}}}\n"
                        f"task: {task}\nmethod: {method}\n")
    assert main(["validate", str(scenario)]) == 2
    err = capsys.readouterr().err
    assert str(scenario) in err and f": {key}" in err and "Traceback" not in err
