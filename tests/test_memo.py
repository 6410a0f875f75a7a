"""The content-addressed memo (bench.api.memo): keys see every bit of their inputs, entries survive a
round trip, and what cannot be read is a miss."""

from __future__ import annotations

import torch

from bench.api import memo


def test_the_digest_changes_with_any_bit_of_a_tensor_and_with_its_shape_or_dtype():
    x = torch.arange(12.0)
    base = memo.digest("a", x)
    flipped = x.clone()
    flipped.view(torch.int32)[5] ^= 1  # one bit of one float
    assert memo.digest("a", flipped) != base
    assert memo.digest("a", x.view(3, 4)) != base
    assert memo.digest("a", x.double()) != base
    assert memo.digest("a", x.clone()) == base
    assert memo.digest("b", x) != base


def test_a_zero_dimensional_tensor_has_a_digest_of_its_own():
    counter = torch.tensor(3)  # as a model's state holds counters
    assert memo.digest(counter) == memo.digest(torch.tensor(3))
    assert memo.digest(counter) != memo.digest(torch.tensor([3]))
    assert memo.digest(counter) != memo.digest(torch.tensor(4))


def test_an_entry_round_trips_and_a_broken_one_is_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERBENCH_CACHE", str(tmp_path))
    assert memo.load("kind", "key") is None
    memo.save("kind", "key", {"w": torch.ones(3), "n": 2})
    entry = memo.load("kind", "key")
    assert torch.equal(entry["w"], torch.ones(3)) and entry["n"] == 2
    assert not list((tmp_path / "memo" / "kind").glob("*.tmp"))  # written through a renamed temporary file
    (tmp_path / "memo" / "kind" / "key.pt").write_bytes(b"truncated")
    assert memo.load("kind", "key") is None
