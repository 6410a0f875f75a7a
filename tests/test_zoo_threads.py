import torch
from safetensors.torch import load_file

from bench.world.models import torch_threads


def _weights(root, monkeypatch, threads):
    from bench.api.registry import MODELS

    monkeypatch.setenv("TIERBENCH_CACHE", str(root))
    zoo = MODELS.get("tiny-gpt2")
    config = zoo.Config(hidden=64, layers=1, heads=4, vocab=300, context=64, pretrain_steps=12, pretrain_batch=16,
                        corpus_documents=120)
    with torch_threads(threads):
        path = zoo(config).path()
    return load_file(f"{path}/model.safetensors")


def test_a_zoo_model_does_not_depend_on_the_thread_count_of_the_process_that_builds_it(tmp_path, monkeypatch):
    one = _weights(tmp_path / "one", monkeypatch, 1)
    two = _weights(tmp_path / "two", monkeypatch, 2)
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
