"""Shadows memoised on disk (bench.engine.shadow_memo): a hit is exactly the model training would produce, for
every method, and any input training reads keys it apart."""

from __future__ import annotations

import shutil
import uuid

import pytest
import torch

from attacks.mia._common import confidence_signal
from bench.api import memo
from bench.api.seeding import generator
from bench.engine import shadow_memo, views
from bench.engine.runner import plan, prepare
from bench.engine.views import ViewBuilder
from tests.helpers import make_scenario

CLASSIFY = {"name": "synthetic-clinical", "params": {"num_classes": 3, "max_length": 32}}
PAIRS = {"name": "synthetic-preferences", "params": {"max_length": 48}}
FEDERATION = {"clients": 2, "clients_per_round": 2, "rounds": 2, "local_steps": 2, "batch_size": 2,
              "optimizer": "adam", "lr": 0.01, "examples_per_client": 12, "member_fraction": 0.5}


def _builder(tmp_path, **overrides) -> tuple[ViewBuilder, list[dict]]:
    scenario = make_scenario(tmp_path, **{"federation": FEDERATION, **overrides})
    prepared = prepare(scenario, 0, plan(scenario))
    builder = ViewBuilder(scenario, 0, prepared.built, prepared.transcript, prepared.tokenizer, prepared.clients,
                          prepared.task_data, prepared.truth)
    return builder, [e for c in prepared.clients for e in c.members][:8]


def _shadow(builder: ViewBuilder, examples: list[dict], federated: bool):
    views.SHADOW_CACHE.clear()  # only the disk memo can serve it
    return builder.train_shadow(examples, generator("lira"), federated=federated)


@pytest.mark.parametrize(("method", "task", "federated"), [
    ("fft", CLASSIFY, True), ("lora", CLASSIFY, False), ("adapter", CLASSIFY, True), ("prompt-tuning", CLASSIFY, True),
    ("rlhf", PAIRS, True)])
def test_a_memoised_shadow_is_the_shadow_training_gives(tmp_path, monkeypatch, method, task, federated):
    # the models stay in the test cache (a fresh TIERBENCH_CACHE would pretrain them again); the entries go to a
    # folder of this test's own
    kind = f"shadow-test-{uuid.uuid4().hex}"
    monkeypatch.setattr(shadow_memo, "MEMO_KIND", kind)
    folder = memo.cache_root() / "memo" / kind
    try:
        _check_round_trip(tmp_path, monkeypatch, method, task, federated, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_round_trip(tmp_path, monkeypatch, method, task, federated, folder):
    builder, examples = _builder(tmp_path, method=method, task=task)
    trained = _shadow(builder, examples, federated)
    trained_state, trained_signal = trained.get_flat().clone(), confidence_signal(trained, examples)
    assert len(list(folder.glob("*.pt"))) == 1
    calls = []
    monkeypatch.setattr(views.ShadowTrainer, "_fit_federated" if federated else "_fit",
                        lambda *args: calls.append(args))  # a hit must not train
    restored = _shadow(builder, examples, federated)
    assert not calls
    assert torch.equal(restored.get_flat(), trained_state)
    assert torch.equal(confidence_signal(restored, examples), trained_signal)
    assert not torch.equal(trained_state, builder.built.method.get_flat())  # the shadow did train


def test_the_key_sees_the_shadow_seed_the_prepared_weights_and_the_thread_count(tmp_path):
    model = torch.nn.Linear(3, 1)
    prepared = shadow_memo.fingerprint(model)
    base = shadow_memo.key("k", 1, prepared, torch.device("cpu"))
    assert shadow_memo.key("k", 1, shadow_memo.fingerprint(model), torch.device("cpu")) == base
    assert shadow_memo.key("k", 2, prepared, torch.device("cpu")) != base
    assert shadow_memo.key("other", 1, prepared, torch.device("cpu")) != base
    with torch.no_grad():
        model.weight.view(-1)[0:1].view(torch.int32).bitwise_xor_(1)  # one bit of one weight
    assert shadow_memo.key("k", 1, shadow_memo.fingerprint(model), torch.device("cpu")) != base
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert shadow_memo.key("k", 1, prepared, torch.device("cpu")) != base
    finally:
        torch.set_num_threads(threads)


def test_an_entry_that_does_not_fit_the_model_is_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERBENCH_CACHE", str(tmp_path))
    model = torch.nn.Linear(2, 2)
    memo.save(shadow_memo.MEMO_KIND, "key", {"changed": {"weight": torch.ones(3, 3)}})
    memo.save(shadow_memo.MEMO_KIND, "dtype", {"changed": {"weight": torch.ones(2, 2, dtype=torch.float64)}})
    before = model.weight.detach().clone()
    assert not shadow_memo.restore(model, "key")
    assert not shadow_memo.restore(model, "dtype")
    assert torch.equal(model.weight, before)
    assert not shadow_memo.restore(model, "absent")
