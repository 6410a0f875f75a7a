"""Shared pieces of the extraction attacks: a record's prefix and suffix, overlap measures, public prompts.

The attacker holds the candidate records (the "discoverable" setting of Nasr et al. 2023 gives it each
record's prefix; the rest of the record is what reproduction is checked against); it never learns
which candidates were trained on: ``bench.scoring.extraction`` splits members from non-members.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from attacks.mia._common import TOKEN_CHUNK, text_of
from attacks.mia.generation import rouge_l_f1, split_prefix
from bench.api.handles import ModelHandle
from bench.api.transcript import ThreatView
from bench.api.vocabulary import PROMPT_TEMPLATE, Record

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import PreTrainedTokenizerBase


def prefix_and_suffix(view: ThreatView, example: Record, fraction: float) -> tuple[str, str]:
    """An instruction record is prompted with its instruction and checked on its response; a text record
    is cut after ``fraction`` of its words (the prefix keeps no trailing space; the suffix starts with one)."""
    if "instruction" in example and "response" in example:
        return PROMPT_TEMPLATE.format(instruction=example["instruction"]), str(example["response"])
    prefix, rest = split_prefix(text_of(view, example), fraction)
    return prefix, (" " + " ".join(rest)) if rest else ""


def continuation_ids(tokenizer: PreTrainedTokenizerBase, prefix: str, continuation: str) -> list[int]:
    """Token ids of ``continuation`` as the model would produce them after ``prefix`` (the ids of
    prefix + continuation past those of the prefix, so a merge at the boundary is counted once)."""
    head = tokenizer(prefix).input_ids
    full = tokenizer(prefix + continuation).input_ids
    common = 0
    while common < min(len(head), len(full)) and head[common] == full[common]:
        common += 1
    return list(full[common:])


def exact_k(tokenizer: PreTrainedTokenizerBase, prefix: str, generated: str, suffix: str, k: int) -> tuple[bool, int]:
    """(whether the first ``k`` generated tokens equal the true suffix's first ``k``, how many were compared)."""
    target = continuation_ids(tokenizer, prefix, suffix)[:k]
    if not target:
        return False, 0
    produced = continuation_ids(tokenizer, prefix, generated)[: len(target)]
    return produced == target, len(target)


def longest_common_substring(a: str, b: str) -> int:
    """Characters in the longest common substring of ``a`` and ``b`` (dynamic programming, O(|a| |b|))."""
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def lcs_fraction(generated: str, reference: str) -> float:
    """Longest common substring / reference length; the generation is cut to the reference's length."""
    reference = reference.strip()
    if not reference:
        return 0.0
    return longest_common_substring(generated.strip()[: len(reference)], reference) / len(reference)


def rouge_l(generated: str, reference: str) -> float:
    return rouge_l_f1(generated.split(), reference.split())


def public_prompts(view: ThreatView, words: int, count: int) -> list[str]:
    """Distinct starts (first ``words`` words) of the public auxiliary records, at most ``count``: the
    "internet text" prompts of Carlini et al. 2021, taken from public data of the task's distribution."""
    prompts: list[str] = []
    for example in view.auxiliary:
        start = " ".join(text_of(view, example).split(" ")[:words])
        if start and start not in prompts:
            prompts.append(start)
        if len(prompts) >= count:
            break
    return prompts


def summed_nll(handle: ModelHandle, examples: list[Record]) -> torch.Tensor:
    """Summed token NLL of each example under ``handle`` (needs logits); lengths may differ."""
    import torch.nn.functional as F

    out = []
    for start in range(0, len(examples), TOKEN_CHUNK):
        for logits, targets in handle.token_logits(examples[start : start + TOKEN_CHUNK]):
            out.append(float(F.cross_entropy(logits.float(), targets, reduction="sum")))
    return torch.tensor(out, dtype=torch.float64)


def replace_in(example: Record, old: str, new: str) -> Record:
    """The record with every text field's ``old`` replaced by ``new`` (other fields unchanged)."""
    return {k: (v.replace(old, new) if isinstance(v, str) else v) for k, v in example.items()}
