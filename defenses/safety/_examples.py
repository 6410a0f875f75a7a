"""The part both safety defenses share: the (request, response) of a record, and a training wrapper that
trains on rewritten examples while the engine's ground truth keeps pointing at the client's own records."""

from __future__ import annotations

from collections.abc import Callable

from bench.api.vocabulary import Record
from bench.client.training import LocalJob, Trainer

Rewrite = Callable[[list[Record]], tuple[list[Record], list[int]]]
"""The client's examples -> (examples to train on, index of each one's source record in the input)."""


def request_response(example: Record) -> tuple[str, str] | None:
    """The request and the response a record trains on (instruction: its response; preference: the chosen
    one), or None for a record without a response (classification, plain text): nothing to judge."""
    if "instruction" in example and "response" in example:
        return str(example["instruction"]), str(example["response"])
    if "prompt" in example and "chosen" in example:
        return str(example["prompt"]), str(example["chosen"])
    return None


def with_response(example: Record, response: str) -> Record:
    """``example`` with its trained response replaced (the chosen one of a preference pair)."""
    key = "response" if "response" in example else "chosen"
    return {**example, key: response}


def training_on(train_step: Trainer, rewrite: Rewrite) -> Trainer:
    """A trainer that trains ``train_step`` on ``rewrite(job.examples)``.

    A client left with no example trains nothing and reports no loss: its update is zero (its weight
    in the mean is still its record count; a real client would skip the round). The batches' indices
    (``job.seen``, the ground truth of which records a step used) are mapped back to the source records.
    """

    def trained(job: LocalJob) -> dict[str, float]:
        original = job.examples
        examples, origin = rewrite(original)
        if not examples:
            return {}
        start = len(job.seen)
        job.examples = examples
        try:
            return train_step(job)
        finally:
            job.examples = original
            job.seen[start:] = [[origin[i] for i in step] for step in job.seen[start:]]

    return trained
