"""Can the base model read the task's text at all? Its perplexity on a sample of evaluation records.

A run on a model that cannot model its data measures nothing about the trade-offs Table 4 is about:
the zoo models, pretrained on generated text, score a perplexity of about 7.75e6 on real dialogue
responses against 3.1 on the synthetic pairs they were built for (issue 15). Each run therefore
records ``model.base_perplexity`` (the untrained base model as a causal LM, whatever head the run
trains) and, above ``WARNING_PERPLEXITY``, a ``warning`` in that row's extra, so a published figure
on such a run carries its caveat.

What is scored is the text the task trains on: the whole text for classification and language
tasks, the response given its prompt for instruction tasks, the chosen response given its prompt
for preference tasks; token-weighted (exp of the total NLL over all scored tokens).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from bench.api.vocabulary import JsonObject, Record, TaskKind
from bench.scoring.score import Metric

if TYPE_CHECKING:  # named in annotations only (transformers loads lazily; scoring never builds these)
    from transformers import PreTrainedTokenizerBase

    from bench.world.models import ModelSource
    from bench.world.tasks import Task

RECORDS = 16
"""Evaluation records scored (the first of the run's evaluation set, which the seed already shuffled)."""

BATCH = 8

WARNING_PERPLEXITY = 1000.0
"""Above this, the base model cannot model the task's data. Why 1000: pretrained LMs score tens on
in-domain English (SmolLM2-135M ~50 on a clinical sentence), the zoo ~3 on its synthetic text; a
uniform guess over a 2,048-token zoo vocabulary scores 2,048, and 1,000 is about that, i.e. no better
than knowing which tokens exist. The zoo on real English scores orders of magnitude above it."""


def measure(source: ModelSource, task: Task, records: list[Record], device: torch.device) -> tuple[Metric, dict] | None:
    """(``model.base_perplexity`` metric, its row's extra) for the base model of ``source`` on ``records``;
    None for an encoder-only model (it has no next-token distribution to score)."""
    if source.check_task("language") is not None:
        return None
    location = source.path()
    sample = records[:RECORDS]
    key = (location, repr(source.load_kwargs()), task.kind, task.config.max_length, repr(sample), str(device))
    if key not in _measured:  # a grid's cells share base model and records per seed: measure once per process
        _measured[key] = _measure(location, source, task, sample, device)
    return _measured[key]


_measured: dict[tuple, tuple[Metric, dict]] = {}


def _measure(location: str, source: ModelSource, task: Task, sample: list[Record], device: torch.device) -> tuple[Metric, dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # positions count from the first token of each row
    model = AutoModelForCausalLM.from_pretrained(location, **source.load_kwargs()).to(device).eval()
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(sample), BATCH):
            batch = lm_batch(task, sample[start : start + BATCH], tokenizer, device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            total, count = summed_nll(logits, batch["labels"])
            nll, tokens = nll + total, tokens + count
    perplexity = math.exp(nll / tokens) if tokens else float("nan")
    extra: JsonObject = {"records": len(sample), "tokens": tokens, "threshold": WARNING_PERPLEXITY,
                             "uniform": len(tokenizer)}
    if perplexity > WARNING_PERPLEXITY:
        extra["warning"] = warning(perplexity, len(tokenizer))
    return Metric("model.base_perplexity", perplexity, higher_is_better=False), extra


def warning(perplexity: float, vocabulary: int) -> str:
    return (f"the base model cannot model this task's data: perplexity {perplexity:.3g} on evaluation records "
            f"(above {WARNING_PERPLEXITY:g}; a uniform guess over its {vocabulary}-token vocabulary scores "
            f"{vocabulary}); utility and attack figures of this run describe a model that does not read its text")


def lm_batch(task: Task, examples: list[Record], tokenizer: PreTrainedTokenizerBase, device: torch.device) -> dict[str, torch.Tensor]:
    """Causal-LM inputs and labels (-100 where not scored) for the text ``task`` trains on."""
    from bench.world.tasks import PROMPT_TEMPLATE, collate_prompt_response

    if task.kind == TaskKind.INSTRUCTION:
        return task.collate(examples, tokenizer, device)
    if task.kind == TaskKind.PREFERENCE:
        return collate_prompt_response([PROMPT_TEMPLATE.format(instruction=e["prompt"]) for e in examples],
                                       [e["chosen"] for e in examples], tokenizer, task.config.max_length, device)
    texts = [task.text_of(e) + (tokenizer.eos_token or "") for e in examples]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=task.config.max_length, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device),
            "labels": labels.to(device)}


def summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """(total next-token NLL, scored tokens) over positions whose label is not -100."""
    shifted, targets = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), reduction="sum",
                          ignore_index=-100)
    return float(nll), int((targets != -100).sum())
