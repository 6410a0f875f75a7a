"""Openness tiers: what each handle refuses, what the provider logs, and egress accounting."""

from __future__ import annotations

import pytest
import torch

from bench.api.errors import TierAccessError
from bench.api.registry import MODELS, TASKS, TIERS
from bench.api.transcript import ProviderRecord, Transcript
from bench.client.device import pick_device
from bench.client.training import LocalJob
from bench.world.tiers import Access, OpenModel, ProviderAPI, record_egress


def zoo_model(kind: str, num_labels: int = 0):
    source = MODELS.get("tiny-gpt2")(MODELS.get("tiny-gpt2").Config())
    return source.load(kind, num_labels, pick_device("cpu"), init_seed=0)

NOTES = [{"text": "Patient Alice Adams, MRN 123456, seen with a cough.", "label": 0},
         {"text": "Patient Bruno Berg, MRN 654321, seen with chest pain.", "label": 1}]


@pytest.fixture(scope="module")
def classifier():
    task = TASKS.get("synthetic-clinical")(TASKS.get("synthetic-clinical").Config(num_classes=3))
    model, tokenizer = zoo_model("classification", 3)
    return model, tokenizer, task


def handle(tier_name: str, classifier, log: list[ProviderRecord]):
    model, tokenizer, task = classifier
    return TIERS.get(tier_name)().handle(model, None, task, tokenizer, log)


def test_open_tiers_hand_out_the_model_and_hosted_tiers_an_api(classifier):
    for name in ("open-source", "open-weight"):
        assert isinstance(handle(name, classifier, []), OpenModel)
    for name in ("gray-box", "black-box"):
        assert isinstance(handle(name, classifier, []), ProviderAPI)


def test_open_handle_gives_weights_gradients_and_hidden_states(classifier):
    open_model = handle("open-weight", classifier, [])
    assert open_model.weights() and open_model.module() is classifier[0]
    (hidden,) = open_model.hidden_states(NOTES)
    assert hidden.shape[0] == 2 and hidden.shape[-1] == classifier[0].config.hidden_size
    grads = open_model.gradients(NOTES)
    assert set(grads) == {n for n, p in classifier[0].named_parameters() if p.requires_grad}
    assert any(g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize("tier", ["gray-box", "black-box"])
@pytest.mark.parametrize("path", ["weights", "module", "hidden_states", "gradients"])
def test_hosted_tiers_refuse_weights_gradients_and_hidden_states(classifier, tier, path):
    log: list[ProviderRecord] = []
    api = handle(tier, classifier, log)
    call = {"weights": lambda: api.weights(), "module": lambda: api.module(),
            "hidden_states": lambda: api.hidden_states(NOTES), "gradients": lambda: api.gradients(NOTES)}[path]
    with pytest.raises(TierAccessError, match="provider hosts the model"):
        call()
    assert log == []


@pytest.mark.parametrize("path", ["class_logits", "token_logits", "example_losses"])
def test_black_box_refuses_logits_before_anything_is_sent(classifier, path):
    log: list[ProviderRecord] = []
    api = handle("black-box", classifier, log)
    with pytest.raises(TierAccessError, match="needs logits access"):
        getattr(api, path)(NOTES)
    assert log == []  # refused before the request reached the provider


def test_gray_box_serves_logits_and_logs_every_request_with_client_and_purpose(classifier):
    log: list[ProviderRecord] = []
    api = handle("gray-box", classifier, log).for_client(3)
    assert api.class_logits(NOTES).shape == (2, 3)
    assert api.example_losses(NOTES).shape == (2,)
    task = classifier[2]
    assert [(r.client, r.purpose, r.text) for r in log] == [(3, "inference", task.text_of(e)) for e in NOTES] * 2


def test_black_box_serves_text_and_logs_prompts(classifier):
    log: list[ProviderRecord] = []
    api = handle("black-box", classifier, log).for_client(1)
    assert api.predict_labels(NOTES).shape == (2,)
    assert [r.text for r in log] == [e["text"] for e in NOTES] and {r.purpose for r in log} == {"inference"}


def test_tuning_endpoint_is_gray_box_only_and_logs_each_upload(classifier):
    log: list[ProviderRecord] = []
    api = handle("gray-box", classifier, log).for_client(2)
    trained = []
    job = LocalJob(model=classifier[0], parameters=[], examples=NOTES, collate=None, example_losses=None, steps=1,
                   batch_size=2, lr=0.1, optimizer="sgd", rng=torch.Generator(), client=2)
    assert api.tune(job, lambda j: trained.append(j) or {"loss": 0.0}) == {"loss": 0.0}
    assert trained == [job]  # the provider trained on the job it received
    assert [(r.client, r.purpose) for r in log] == [(2, "tuning-upload")] * 2
    with pytest.raises(TierAccessError, match="provider-tuning access"):
        handle("black-box", classifier, []).upload_for_tuning(NOTES)


def test_tiers_grant_what_the_design_says():
    grants = {name: TIERS.get(name).grants for name in TIERS.names()}
    assert grants["open-source"] - grants["open-weight"] == {Access.TRAINING_DATA}
    assert Access.WEIGHTS not in grants["gray-box"] | grants["black-box"]
    assert grants["black-box"] == {Access.TEXT}
    assert Access.PROVIDER_TUNING in grants["gray-box"] and Access.LOGITS in grants["gray-box"]


def test_egress_counts_records_and_utf8_bytes():
    transcript = Transcript()
    record_egress(transcript, ["abc", "Zoë"])
    record_egress(transcript, [])
    assert (transcript.egress_records, transcript.egress_bytes) == (2, 3 + 4)


def test_only_open_source_publishes_the_pretraining_corpus():
    class Source:
        def pretraining_corpus(self):
            return ["a public document"]

    corpora = {name: TIERS.get(name)().public_corpus(Source()) for name in TIERS.names()}
    assert corpora == {"open-source": ["a public document"], "open-weight": None, "gray-box": None, "black-box": None}


def test_generation_keeps_long_prompts_inside_the_model_context(classifier):
    from bench.world.tiers import prompt_room

    model, tokenizer = zoo_model("language")
    task = TASKS.get("synthetic-instructions")(TASKS.get("synthetic-instructions").Config())
    limit = model.config.max_position_embeddings
    assert prompt_room(model, 16) == limit - 16
    (text,) = OpenModel(model, None, task, tokenizer).generate(["note " * (2 * limit)], max_new_tokens=4)
    assert isinstance(text, str)
