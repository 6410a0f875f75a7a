"""Tasks: where records come from, how they are batched and scored, and how clients split them.

A task produces a pool of records; ``partition`` deals them to clients (iid or Dirichlet over labels)
and splits each client's share into members (trained on) and held-out non-members of the same
distribution. A disjoint public ``auxiliary`` set (for shadow models, backdoor evaluation) and a
``test`` set (utility) are drawn too. All from the seed.
"""

from __future__ import annotations

import abc
import csv
import functools
import gzip
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TextIO

import torch
import torch.nn.functional as F

from bench.api.config import FieldError, doc
from bench.api.errors import UserError
from bench.api.registry import TASKS
from bench.api.transcript import Canary  # re-exported: tasks make canaries, the api names them
from bench.api.vocabulary import PROMPT_TEMPLATE, Record, TaskKind
from bench.world import synthetic

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import BatchEncoding, PreTrainedTokenizerBase

PREFERENCE_TEMPLATE = "### Instruction:\n{prompt}\n### Chosen:\n{chosen}\n### Rejected:\n{rejected}"
"""How a preference record is rendered as one text (what a provider logs when it receives the record)."""


@dataclass
class TaskData:
    pool: list[Record]
    test: list[Record]
    auxiliary: list[Record]
    canaries: list[Canary] = field(default_factory=list)


class Task(abc.ABC):
    name: ClassVar[str]
    kind: ClassVar[TaskKind] = TaskKind.CLASSIFICATION
    """``classification``, ``language``, ``instruction`` or ``preference``."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        max_length: int = doc("Tokens per example after truncation.", 64)

    def __init__(self, config: Task.Config):
        if not isinstance(config, Task.Config):  # what every reader of a task's config may rely on (max_length)
            raise TypeError(f"{type(self).__qualname__}.Config must derive Task.Config, got {type(config).__qualname__}")
        self.config = config

    @property
    def num_labels(self) -> int:
        return 0

    @abc.abstractmethod
    def load(self, total: int, rng: torch.Generator) -> TaskData:
        """The task's data (pool, test and auxiliary splits, canaries) for ``total`` pool examples, drawn with ``rng``."""

    def check(self) -> list[str]:
        """What can be checked before a run (files, columns, labels): raises ``UserError`` naming the
        key (``task.params.*``); returns notes worth showing (rows skipped, say)."""
        return []

    def text_of(self, example: Record) -> str:
        """The raw text an example carries (what leaves a client when it is sent to a provider)."""
        if "chosen" in example:
            return PREFERENCE_TEMPLATE.format(**example)
        if "text" in example:  # an empty text is still a text, not an instruction record
            return example["text"]
        return PROMPT_TEMPLATE.format(**example) + example.get("response", "")

    def label_of(self, example: Record) -> int:
        return int(example.get("label", 0))

    # --- batching and loss -----------------------------------------------------------------------
    def collate(self, examples: list[Record], tokenizer: PreTrainedTokenizerBase, device: torch.device | str) -> dict[str, torch.Tensor]:
        texts = [self.text_of(e) + (tokenizer.eos_token or "") for e in examples]
        enc = tokenizer(texts, padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt")
        batch = _with_positions(enc)
        if self.kind == TaskKind.CLASSIFICATION:
            batch["labels"] = torch.tensor([self.label_of(e) for e in examples])
        else:
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return {k: v.to(device) for k, v in batch.items()}

    def example_losses(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        if self.kind == TaskKind.CLASSIFICATION:
            return F.cross_entropy(widened(logits), batch["labels"], reduction="none")
        return token_losses(logits, batch["labels"])


def widened(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` in at least float32 for a loss: half precision is widened, float64 is kept (a float64
    model's losses rounded to float32 differ by an ulp between two orders of the same sums, and Adam
    turns that into visible differences in the update)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL per example over positions whose label is not -100."""
    shifted, targets = widened(logits[:, :-1]), labels[:, 1:]
    nll = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), reduction="none", ignore_index=-100)
    nll = nll.view(targets.shape)
    counts = (targets != -100).sum(dim=1).clamp(min=1)
    return nll.sum(dim=1) / counts


def truncation(task: Task, examples: list[Record], tokenizer: PreTrainedTokenizerBase) -> float:
    """The fraction of ``examples`` that ``max_length`` cuts short (``data.truncated_fraction``).

    A record whose prompt alone fills ``max_length`` keeps no response token: its loss masks every
    position, and the run would report perplexity 1.0 and chance-level attacks as a measurement.
    That is an error naming the task, the key and the length needed.
    """
    limit, eos = task.config.max_length, tokenizer.eos_token or ""
    records = [_prompt_and_full(task, e, eos) for e in examples]
    pairs = [pair for record in records for pair in record]
    if not pairs:
        return 0.0
    prompts = [len(ids) for ids in tokenizer([p for p, _ in pairs]).input_ids]  # as collate masks them
    fulls = [len(ids) for ids in tokenizer([f for _, f in pairs]).input_ids]
    starved = [n for n in prompts if n >= limit]
    if starved:
        raise UserError(f"task {task.name}: {len(starved)} of {len(pairs)} sequences have a prompt of {limit} tokens or "
                        f"more (the longest {max(starved)}), so max_length {limit} cuts every response token of "
                        f"those; set max_length to at least {max(starved) + 1} ({max(fulls)} keeps every record "
                        f"whole)", key="task.params.max_length")
    cut = iter(full > limit for full in fulls)
    return sum(any([next(cut) for _ in record]) for record in records) / len(records)


def identical_pairs(task: Task, examples: list[Record], tokenizer: PreTrainedTokenizerBase) -> tuple[float, str] | None:
    """(fraction of preference ``examples`` whose chosen and rejected sequences are identical after
    ``max_length`` truncation, a warning naming the length that keeps them apart or "" when none is);
    None for a task that is not a preference task.

    Such a pair's Bradley-Terry margin and DPO margin are exactly 0 whatever the model: it teaches
    nothing, and a batch made only of them sends an exactly zero update (issue 15: Table 4's RLHF
    inversion grid at max_length 24 cut 19 of 40 training pairs to identical answers, and the attacked
    client's update was 0.0 on 2 of 5 seeds). Rejected answers that differ from the chosen one late
    (another plan, another date) are what a short ``max_length`` cuts away."""
    if task.kind != TaskKind.PREFERENCE or not examples:
        return None
    eos = tokenizer.eos_token or ""
    sides = [[full for _, full in _prompt_and_full(task, e, eos)] for e in examples]
    ids = tokenizer([s for pair in sides for s in pair]).input_ids
    limit = task.config.max_length
    same = [ids[2 * i][:limit] == ids[2 * i + 1][:limit] for i in range(len(examples))]
    if not any(same):
        return 0.0, ""
    whole = max(len(x) for x in ids)
    return sum(same) / len(same), (
        f"{sum(same)} of {len(same)} preference pairs are identical after max_length {limit} truncation (chosen == "
        f"rejected): they give a zero reward and DPO margin, so no gradient; max_length {whole} keeps every pair whole")


def _prompt_and_full(task: Task, example: Record, eos: str) -> list[tuple[str, str]]:
    """(prompt, whole sequence) per sequence ``collate`` builds from ``example``; the prompt is empty
    where every token (or a class label) is supervised."""
    if task.kind == TaskKind.INSTRUCTION:
        prompt = PROMPT_TEMPLATE.format(instruction=example["instruction"])
        return [(prompt, prompt + example["response"] + eos)]
    if task.kind == TaskKind.PREFERENCE:
        prompt = PROMPT_TEMPLATE.format(instruction=example["prompt"])
        return [(prompt, prompt + example[k] + eos) for k in ("chosen", "rejected")]
    return [("", task.text_of(example) + eos)]


def _with_positions(enc: BatchEncoding) -> dict[str, torch.Tensor]:
    # Per-sample-gradient engines need position ids expanded to the batch (GPT-2 otherwise broadcasts).
    ids = enc["input_ids"]
    positions = torch.arange(ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1).contiguous()
    return {"input_ids": ids, "attention_mask": enc["attention_mask"], "position_ids": positions}


@TASKS.register("synthetic-clinical")
class SyntheticClinical(Task):
    """Generated clinical notes with names, record numbers and dates; label = condition."""

    @dataclass(frozen=True, kw_only=True)
    class Config(Task.Config):
        num_classes: int = doc("Number of condition classes (at most 5).", 5)
        objective: str = doc("'classification' (a head predicts the condition) or 'language' (next-token).", "classification")
        canary_fraction: float = doc("Fraction of pool records that are canaries with a random secret.", 0.0)
        canary_digits: int = doc("Digits in a canary secret; the secret space is every such number.", 4)
        canary_space: int = doc("Candidate secrets the attacker ranks (the true one among them).", 1000)
        atypical_fraction: float = doc("Fraction of notes whose symptom and plan belong to another condition than "
                                       "their label (comorbidity, coding error): no rule predicts them, so held-out "
                                       "accuracy is at most about 1 - this, and members among them are what "
                                       "membership inference singles out.", 0.0)

        def __post_init__(self) -> None:
            if not 2 <= self.num_classes <= len(synthetic.CONDITION_NAMES):
                raise ValueError(f"num_classes must be in 2..{len(synthetic.CONDITION_NAMES)}")
            if self.objective not in ("classification", "language"):
                raise ValueError("objective must be 'classification' or 'language'")
            if not 0 <= self.atypical_fraction <= 1:
                raise ValueError("atypical_fraction must be in [0, 1]")

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.config.objective

    @property
    def num_labels(self) -> int:
        return self.config.num_classes

    def _note(self, rng: torch.Generator) -> Record:
        label = int(torch.randint(self.config.num_classes, (1,), generator=rng))
        # Drawn only when asked for, so that the records of a task without atypical notes stay as they were.
        if self.config.atypical_fraction and float(torch.rand(1, generator=rng)) < self.config.atypical_fraction:
            return {"text": synthetic.atypical_note(label, rng, self.config.num_classes), "label": label}
        return {"text": synthetic.clinical_note(label, rng), "label": label}

    def load(self, total: int, rng: torch.Generator) -> TaskData:
        pool = [self._note(rng) for _ in range(total)]
        canaries = self._canaries(pool, rng)
        test = [self._note(rng) for _ in range(max(total // 4, 64))]
        auxiliary = [self._note(rng) for _ in range(max(total // 4, 64))]
        return TaskData(pool, test, auxiliary, canaries)

    def _canaries(self, pool: list[Record], rng: torch.Generator) -> list[Canary]:
        count = int(round(self.config.canary_fraction * len(pool)))
        canaries = []
        for index in torch.randperm(len(pool), generator=rng)[:count].tolist():
            name = synthetic.patient(rng)["name"]
            prefix = synthetic.CANARY_PREFIX.format(name=name)
            space = sorted({synthetic.canary_secret(rng, self.config.canary_digits) for _ in range(self.config.canary_space)})
            secret = space[int(torch.randint(len(space), (1,), generator=rng))]
            pool[index] = {"text": f"{prefix}{secret}.", "label": pool[index]["label"], "canary": len(canaries)}
            canaries.append(Canary(prefix=prefix, secret_space=space, secret=secret))
        return canaries


@TASKS.register("synthetic-instructions")
class SyntheticInstructions(Task):
    """Instruction -> response pairs that carry private facts (addresses, record numbers, dates)."""

    kind = TaskKind.INSTRUCTION

    @dataclass(frozen=True, kw_only=True)
    class Config(Task.Config):
        pass

    def load(self, total: int, rng: torch.Generator) -> TaskData:
        draw = lambda n: [synthetic.triage_pair(rng) for _ in range(n)]  # noqa: E731
        return TaskData(draw(total), draw(max(total // 4, 32)), draw(max(total // 4, 32)))

    def text_of(self, example: Record) -> str:
        return PROMPT_TEMPLATE.format(instruction=example["instruction"]) + example["response"]

    def collate(self, examples, tokenizer, device):
        return collate_prompt_response(
            [PROMPT_TEMPLATE.format(instruction=e["instruction"]) for e in examples],
            [e["response"] for e in examples], tokenizer, self.config.max_length, device)


def collate_prompt_response(prompts, responses, tokenizer, max_length, device) -> dict[str, torch.Tensor]:
    """Prompt + response + eos with the loss on response tokens only (SFT)."""
    eos = tokenizer.eos_token or ""
    full = tokenizer([p + r + eos for p, r in zip(prompts, responses)], padding=True, truncation=True,
                     max_length=max_length, return_tensors="pt")
    batch = _with_positions(full)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    prompt_ids = tokenizer(list(prompts)).input_ids if len(prompts) else []  # one call: one per prompt cost more than the model
    for row, ids in enumerate(prompt_ids):
        labels[row, : len(ids)] = -100
    batch["labels"] = labels
    return {k: v.to(device) for k, v in batch.items()}


@TASKS.register("synthetic-preferences")
class SyntheticPreferences(Task):
    """Preference pairs (prompt, chosen, rejected) whose chosen answers carry private facts.

    A batch holds the chosen sequences under the usual keys (``input_ids``, ``attention_mask``,
    ``labels`` with the loss on response tokens only, ``position_ids``) and the rejected ones under
    ``rejected_*``: code that knows nothing of preferences sees one sequence per record (the chosen
    one), and the per-example loss is the chosen response's NLL (the SFT view of the record).
    """

    kind = TaskKind.PREFERENCE

    @dataclass(frozen=True, kw_only=True)
    class Config(Task.Config):
        pass

    def load(self, total: int, rng: torch.Generator) -> TaskData:
        draw = lambda n: [synthetic.preference_triple(rng) for _ in range(n)]  # noqa: E731
        return TaskData(draw(total), draw(max(total // 4, 32)), draw(max(total // 4, 32)))

    def collate(self, examples, tokenizer, device):
        return collate_preferences(examples, tokenizer, self.config.max_length, device)

    def example_losses(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return token_losses(logits, batch["labels"])


def collate_preferences(examples, tokenizer, max_length, device) -> dict[str, torch.Tensor]:
    """Chosen sequences under the plain keys, rejected ones under ``rejected_*``; response-only labels."""
    prompts = [PROMPT_TEMPLATE.format(instruction=e["prompt"]) for e in examples]
    chosen = collate_prompt_response(prompts, [e["chosen"] for e in examples], tokenizer, max_length, device)
    rejected = collate_prompt_response(prompts, [e["rejected"] for e in examples], tokenizer, max_length, device)
    return {**chosen, **{f"rejected_{k}": v for k, v in rejected.items()}}


LOCAL_OBJECTIVES = ("classification", "language", "instruction", "preference")


@TASKS.register("local-file")
class LocalFile(Task):
    """Records from a local CSV, JSON or JSONL file with a column mapping."""

    @dataclass(frozen=True, kw_only=True)
    class Config(Task.Config):
        path: str = doc("File path (.csv, .json or .jsonl, each optionally .gz); a relative path is taken from the "
                        "scenario file's folder.", path="file")
        objective: str = doc("'classification', 'language', 'instruction' or 'preference'.", "classification")
        text_column: str = doc("Column with the text (classification / language).", "text")
        label_column: str = doc("Column with the class label (classification).", "label")
        instruction_column: str = doc("Column with the instruction (instruction tuning).", "instruction")
        input_column: str = doc("Optional column appended to the instruction (empty = none).", "input")
        response_column: str = doc("Column with the response (instruction tuning).", "output")
        prompt_column: str = doc("Column with the prompt (preference pairs).", "prompt")
        chosen_column: str = doc("Column with the preferred response (preference pairs).", "chosen")
        rejected_column: str = doc("Column with the dispreferred response (preference pairs).", "rejected")
        limit: int = doc("Use at most this many records, drawn at random with the run's seed (0 = all).", 0)
        canaries: int = doc("Canary records inserted per repetition count (language / instruction only; 0 = none).", 0)
        canary_repeats: tuple[int, ...] = doc("Repetition counts: each of ``canaries`` canaries per count is inserted "
                                              "that many times, replacing pool records.", (1,))
        canary_digits: int = doc("Digits in a canary's secret.", 6)

        def __post_init__(self) -> None:
            if self.objective not in LOCAL_OBJECTIVES:
                raise ValueError(f"objective must be one of {', '.join(LOCAL_OBJECTIVES)}")
            if self.canaries < 0 or not self.canary_repeats or min(self.canary_repeats) < 1 or self.canary_digits < 1:
                raise FieldError("canaries", "canaries must be >= 0, canary_repeats positive counts, canary_digits >= 1")
            if self.canaries and self.objective not in ("language", "instruction"):
                raise FieldError("canaries", "canaries are text records: objective must be language or instruction")
            if self.limit < 0:
                raise FieldError("limit", f"limit must be 0 (all) or a positive count, got {self.limit}")

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.config.objective

    @property
    def num_labels(self) -> int:
        return len(self._label_ids()) if self.config.objective == "classification" else 0

    def _rows(self) -> list[Record]:
        path = Path(self.config.path)
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise UserError(f"data file {path} {what}", key="task.params.path")
        reader = _reader(path)
        if reader is None:
            raise UserError(f"unsupported file type {path.name!r}; allowed: {', '.join(READERS)} (each optionally .gz)",
                            key="task.params.path")
        stat = path.stat()
        return _read_rows(str(path.resolve()), stat.st_mtime_ns, stat.st_size)

    def _mapping(self) -> dict[str, str]:
        """The columns this objective reads: config key -> column name."""
        c = self.config
        keys = {"preference": ("prompt_column", "chosen_column", "rejected_column"),
                "instruction": ("instruction_column", "response_column"),
                "language": ("text_column",),
                "classification": ("text_column", "label_column")}[c.objective]
        return {key: getattr(c, key) for key in keys}

    def _label_ids(self) -> dict[str, int]:
        # From every usable row of the file, not the seed's sample: the head's size is fixed before sampling.
        if not hasattr(self, "_labels"):
            values = sorted({str(r[self.config.label_column]) for r in self._rows() if self._usable(r)})
            self._labels = {v: i for i, v in enumerate(values)}
        return self._labels

    def _usable(self, row: object) -> bool:
        """A row with every mapped field present and non-empty (others are skipped and counted)."""
        return isinstance(row, dict) and all(_filled(row.get(column)) for column in self._mapping().values())

    def _record(self, row: Record) -> Record:
        c = self.config
        if c.objective == "preference":
            return {"prompt": str(row[c.prompt_column]), "chosen": str(row[c.chosen_column]),
                    "rejected": str(row[c.rejected_column])}
        if c.objective == "instruction":
            extra = str(row.get(c.input_column) or "").strip()
            instruction = str(row[c.instruction_column]) + (f"\n{extra}" if extra else "")
            return {"instruction": instruction, "response": str(row[c.response_column])}
        record = {"text": str(row[c.text_column])}
        if c.objective == "classification":
            record["label"] = self._label_ids()[str(row[c.label_column])]
        return record

    def load(self, total: int, rng: torch.Generator) -> TaskData:
        rows = self._rows()
        # Shuffle first, then keep ``limit``: a file sorted by label must not give a one-class sample.
        order = torch.randperm(len(rows), generator=rng).tolist()
        chosen = [rows[i] for i in order if self._usable(rows[i])]
        skipped = len(order) - len(chosen)
        if skipped:
            warnings.warn(f"{self.config.path}: {skipped} of {len(rows)} rows lack a value for "
                          f"{', '.join(self._mapping().values())} and are skipped", stacklevel=2)
        if self.config.limit:
            chosen = chosen[: self.config.limit]
        records = [self._record(row) for row in chosen]
        if self.config.objective == "classification":
            labels = {r["label"] for r in records}
            if len(labels) < 2:
                raise UserError(f"the records drawn hold {len(labels)} label(s) of column {self.config.label_column!r}; "
                                f"a classification task needs at least 2 (raise limit?)", key="task.params.label_column")
        n_test = max(len(records) // 10, 1)
        test, aux, pool = records[:n_test], records[n_test : 2 * n_test], records[2 * n_test :]
        pool = pool[:total]
        return TaskData(pool, test, aux, self._insert_canaries(pool, rng))

    def _insert_canaries(self, pool: list[Record], rng: torch.Generator) -> list[Canary]:
        """``canaries`` secret-bearing records per repetition count, each copied that many times over random
        pool positions (Carlini et al. 2019's canaries; the repetition study of Carlini et al. 2023)."""
        c = self.config
        needed = c.canaries * sum(c.canary_repeats)
        if not c.canaries:
            return []
        if needed > len(pool):
            raise UserError(f"{c.canaries} canaries x repeats {list(c.canary_repeats)} need {needed} pool records; the "
                            f"pool holds {len(pool)}", key="task.params.canaries")
        slots = iter(torch.randperm(len(pool), generator=rng)[:needed].tolist())
        canaries: list[Canary] = []
        names: set[str] = set()
        for repeats in c.canary_repeats:
            for _ in range(c.canaries):
                name = synthetic.patient(rng)["name"]
                while name in names:  # one prefix per canary: a shared name would make the probe ambiguous
                    name = synthetic.patient(rng)["name"]
                names.add(name)
                secret = synthetic.canary_secret(rng, c.canary_digits)
                record, prefix = self._canary_record(name, secret)
                space = sorted({secret} | {synthetic.canary_secret(rng, c.canary_digits) for _ in range(99)})
                for _ in range(repeats):
                    pool[next(slots)] = {**record, "canary": len(canaries)}
                canaries.append(Canary(prefix=prefix, secret_space=space, secret=secret, repeats=repeats))
        return canaries

    def _canary_record(self, name: str, secret: str) -> tuple[Record, str]:
        """(the canary record in this file's schema, the prefix an attacker completes)."""
        sentence = synthetic.CANARY_PREFIX.format(name=name)
        if self.config.objective == "instruction":
            instruction = f"What is the secret code of patient {name}?"
            record = {"instruction": instruction, "response": f"{sentence}{secret}."}
            return record, PROMPT_TEMPLATE.format(instruction=instruction) + sentence
        return {"text": f"{sentence}{secret}."}, sentence

    def check(self) -> list[str]:
        """The file exists and parses, the mapped columns are in it, rows are usable, labels >= 2."""
        rows = self._rows()
        if not rows:
            raise UserError(f"data file {self.config.path} holds no records", key="task.params.path")
        columns = {k for r in rows if isinstance(r, dict) for k in r}
        if not columns:
            raise UserError(f"data file {self.config.path} holds no records with named fields (expected objects or a "
                            f"CSV header)", key="task.params.path")
        for key, column in self._mapping().items():
            if column not in columns:
                raise UserError(f"column {column!r} is not in {self.config.path}; its columns: "
                                f"{', '.join(sorted(map(str, columns))[:30])}", key=f"task.params.{key}")
        usable = sum(self._usable(r) for r in rows)
        if usable < 2:
            raise UserError(f"{usable} of {len(rows)} rows of {self.config.path} have a value in every mapped column "
                            f"({', '.join(self._mapping().values())}); at least 2 are needed", key="task.params.path")
        notes = []
        if usable < len(rows):
            notes.append(f"{len(rows) - usable} of {len(rows)} rows lack a value for "
                         f"{', '.join(self._mapping().values())} and will be skipped")
        if self.config.objective == "classification" and len(self._label_ids()) < 2:
            raise UserError(f"column {self.config.label_column!r} holds {len(self._label_ids())} distinct label(s); a "
                            f"classification task needs at least 2", key="task.params.label_column")
        return notes

    def text_of(self, example: Record) -> str:
        if self.config.objective == "instruction":
            return SyntheticInstructions.text_of(self, example)
        return Task.text_of(self, example)

    def collate(self, examples, tokenizer, device):
        if self.config.objective == "instruction":
            return SyntheticInstructions.collate(self, examples, tokenizer, device)
        if self.config.objective == "preference":
            return collate_preferences(examples, tokenizer, self.config.max_length, device)
        return super().collate(examples, tokenizer, device)

    def example_losses(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.config.objective == "preference":
            return SyntheticPreferences.example_losses(self, model, batch)
        return super().example_losses(model, batch)


def _filled(value: object) -> bool:
    return value is not None and str(value).strip() != ""


def _open(path: Path) -> TextIO:
    return gzip.open(path, "rt", encoding="utf-8", newline="") if path.name.endswith(".gz") else \
        path.open(encoding="utf-8", newline="")


def _read_csv(path: Path) -> list[Record]:
    with _open(path) as handle:
        return list(csv.DictReader(handle))


def _read_json(path: Path) -> list[Record]:
    with _open(path) as handle:
        rows = json.load(handle)
    if not isinstance(rows, list):
        raise UserError(f"{path} holds a JSON {type(rows).__name__}; expected a list of records (or use .jsonl)",
                        key="task.params.path")
    return rows


def _read_jsonl(path: Path) -> list[Record]:
    with _open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


READERS = {".csv": _read_csv, ".json": _read_json, ".jsonl": _read_jsonl}


def _reader(path: Path) -> Callable[[Path], list[Record]] | None:
    name = path.name[: -len(".gz")] if path.name.endswith(".gz") else path.name
    return READERS.get(Path(name).suffix)


@functools.lru_cache(maxsize=4)
def _read_rows(path: str, mtime_ns: int, size: int) -> list[Record]:
    """The rows of a data file, read once per version of it (``validate`` and every cell of a grid share them)."""
    try:
        return _reader(Path(path))(Path(path))
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte offset {error.start})", key="task.params.path") from None
    except (json.JSONDecodeError, csv.Error, gzip.BadGzipFile, EOFError) as error:
        raise UserError(f"cannot parse {path}: {error}", key="task.params.path") from None


@TASKS.register("hf-dataset")
class HuggingFaceDataset(LocalFile):
    """A Hugging Face dataset by hub name, or a directory written by ``Dataset.save_to_disk``."""

    @dataclass(frozen=True, kw_only=True)
    class Config(LocalFile.Config):
        path: str = doc("Hub dataset name (e.g. 'ag_news') or a local save_to_disk directory (relative to the "
                        "scenario file's folder).", path="local-or-hub")
        subset: str = doc("Dataset configuration name (empty = default).", "")
        split: str = doc("Split to draw records from.", "train")

    def _rows(self) -> list[Record]:
        import datasets

        c = self.config
        try:
            if Path(c.path).is_dir():
                loaded = datasets.load_from_disk(c.path)
                loaded = loaded[c.split] if isinstance(loaded, datasets.DatasetDict) else loaded
            else:
                loaded = datasets.load_dataset(c.path, c.subset or None, split=c.split)
        except (FileNotFoundError, ValueError, KeyError, ConnectionError) as error:
            raise UserError(f"cannot load dataset {c.path!r} split {c.split!r}: {error}", key="task.params.path") from None
        return loaded.to_list()

    def check(self) -> list[str]:
        from bench.spec.scenario import looks_local

        if Path(self.config.path).is_dir():
            return super().check()
        if looks_local(self.config.path):
            raise UserError(f"dataset directory {self.config.path} does not exist", key="task.params.path")
        return []  # a hub name cannot be checked offline
