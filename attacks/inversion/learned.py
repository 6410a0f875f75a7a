"""Learned gradient inversion: a decoder the server trains on updates it simulates itself.

Learning To Invert (Wu, Chen, Guo and Weinberger 2023, "Learning To Invert: Simple Adaptive Attacks for
Gradient Inversion in Federated Learning", UAI; arXiv 2210.10880): the attacker holds the broadcast
model and public records of the task's distribution, so it can compute the update any batch of them
would have produced, and it trains an inversion model (an MLP) to map such updates back to their
batch. Applied to the client's real update, the model reads the batch out. It needs no search and no
layer structure: it works on whatever a method trains (here its point is prompt tuning, whose soft
prompt exposes neither a layer input span for DAGER nor an embedding gradient for the token bag, and
on which gradient matching and exact searches stall; ``results/studies/inversion-curves/``).

What the server does, per attacked round:
1. at the broadcast state (``RoundRecord.global_before``), the gradient of the task loss of every
   public record alone (``ThreatView.auxiliary``: same distribution, never a client's) and of
   ``samples`` sequences it samples from the public base model, each continuing a public record's first
   token (language-modelling tasks); a batch's gradient is the mean of its records' (the clients' loss
   is the mean of per-example losses);
2. sketches each gradient to ``features`` numbers (a count sketch: a fixed random bucket and sign per
   coordinate, as LTI hashes the gradients of large models);
3. trains the MLP on random batches of the federation's batch size, fresh every epoch: the batch's
   gradient direction (unit length, standardised) -> per slot and position a token (or "no token"),
   the slots matched to the batch's records by the Hungarian algorithm (a batch is a set, not a list);
4. reads each attacked update's direction and decodes every slot position by position (argmax).
The decoder depends on the broadcast state, the models, the public records and the generator, never on
an update, so every defense cell of a seed builds the same one: it is memoised in the cache folder
(``bench.api.memo``, keyed by a digest of all it reads), and a Table 4 row trains it once per seed.

Departures from LTI. LTI trains on tens of thousands of auxiliary images; our public split holds 64
records, on which the decoder only memorises (0.015 of held-out notes recovered at batch 1),
so the server adds text it samples from the open base model (temperature 1): on the zoo model, whose
pretraining corpus holds notes of the same kind, the samples are notes with other names and numbers.
The decoder can only name tokens its training sequences hold at least ``min_count`` times. It reads the
update's direction, not its scale (at batch 1, 300 epochs: 0.27 of notes recovered against 0.18 on
the raw update; both figures from session 21's one-off diagnosis on dumped gradients, script not kept), which also makes a clipped update (dp-central's server reads it before
adding noise) read like an unclipped one. The output is a set of ``B`` sequences matched by the
Hungarian algorithm (LTI predicts one image per batch element in a fixed order).

What it sees: the broadcast trainable state and the base weights (``Access.WEIGHTS``), the client's
update (``Access.GRADIENTS``), and public records. A message that is not a float update (secure
aggregation, HE) gives an empty reconstruction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from attacks.inversion._common import Target, TargetConfig, configure_vantage, model_at, observed_gradient, reconstruct
from bench.api import memo
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.errors import IncompatibleError
from bench.api.handles import OpenHandle
from bench.api.predictions import Reconstruction
from bench.api.registry import ATTACKS
from bench.api.seeding import isolated_rng
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, TaskKind, Vantage
from bench.client.vmapped import Bound, Unbatchable, stack_batches, stacked_copies, vmapped_call

MEMO_KIND = "inversion-learned"
_SOURCE = Path(__file__).read_bytes()
"""This file's code: a change to how the decoder is trained must not read an old memo entry."""


@dataclass(frozen=True, kw_only=True)
class LearnedConfig(TargetConfig):
    features: int = doc("Count-sketch size of a gradient (>= 1; a smaller gradient is used whole).", 4096)
    width: int = doc("Hidden width of the inversion MLP (>= 1).", 512)
    token_width: int = doc("Width of the per-position code each slot's tokens are read from (>= 1).", 64)
    epochs: int = doc("Training epochs (>= 1), each over ``batches`` fresh random batches of public records.", 600)
    batches: int = doc("Random public batches per epoch (>= 1).", 256)
    lr: float = doc("Adam learning rate of the inversion MLP (> 0).", 3e-3)
    batch_size: int = doc("Records per attacked batch (0 = the federation's batch size).", 0)
    samples: int = doc("Sequences sampled from the public base model to train on beside the public records (>= 0; "
                       "language-modelling tasks only: their loss reads the tokens alone).", 8000)
    prompt_tokens: int = doc("Each sample continues this many first tokens of a random public record (>= 1).", 1)
    min_count: int = doc("Tokens the training sequences hold fewer times than this are not decoded (>= 1).", 3)

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.features, self.width, self.token_width, self.epochs, self.batches) < 1 or self.lr <= 0:
            raise ValueError("features, width, token_width, epochs and batches must be >= 1 and lr > 0")
        if min(self.batch_size, self.samples) < 0 or min(self.prompt_tokens, self.min_count) < 1:
            raise ValueError("batch_size and samples must be >= 0, prompt_tokens and min_count >= 1")


@ATTACKS.register("inversion-learned")
class LearnedInversion(Attack):
    """An MLP trained on simulated updates of public batches, applied to the clients' updates (LTI)."""

    vantage = Vantage.SERVER
    family = AttackFamily.INVERSION
    access = frozenset({Access.WEIGHTS, Access.GRADIENTS})
    needs = frozenset({"client_updates", "global_states"})
    Config = LearnedConfig

    def __init__(self, config: LearnedConfig):
        super().__init__(config)
        configure_vantage(self, config)

    def run(self, view: ThreatView, rng: torch.Generator) -> Reconstruction:
        if len(view.auxiliary) < 2:
            raise IncompatibleError("inversion-learned trains on public records; this run has fewer than 2")
        inverters: dict[int, _Inverter] = {}

        def invert(target: Target) -> list[list[int]]:
            state = target.global_before
            key = id(state)
            if key not in inverters:
                inverters[key] = self._train(view, state, rng)
            return inverters[key].read(observed_gradient(target.update, view.federation))

        return reconstruct(view, self.config, invert)

    def _train(self, view: ThreatView, state: torch.Tensor, rng: torch.Generator) -> _Inverter:
        """The decoder for updates sent from broadcast state ``state``. It depends on what the key digests, not
        on any update: every defense cell of a seed builds the same one, so it is memoised (``bench.api.memo``)."""
        method: OpenHandle = view.final_model  # type: ignore[assignment]
        public = [view.task.collate([record], view.tokenizer, method.device) for record in view.auxiliary]
        key = self._key(view, method, public, state, rng)
        entry = memo.load(MEMO_KIND, key)
        if entry is not None:
            rng.set_state(entry.pop("rng"))
            return _Inverter.restore(entry)
        inverter = self._build(view, method, public, state, rng)
        memo.save(MEMO_KIND, key, {**inverter.entry(), "rng": rng.get_state()})
        return inverter

    def _key(self, view: ThreatView, method: OpenHandle, public: list[dict[str, torch.Tensor]], state: torch.Tensor,
             rng: torch.Generator) -> str:
        """A digest of everything ``_build`` reads: this file, ``memo.platform`` (the torch build, CPU kernel path,
        thread count and device: float results depend on them), the settings, the broadcast state, every weight of the attacked and the sampling model,
        the public records as collated, the tokenizer's special tokens, and the generator's state."""
        with model_at(method, state) as model:  # digested inside: the state_dict's tensors are the live weights
            weights = memo.digest(*[t for t in model.state_dict().values() if isinstance(t, torch.Tensor)])
        sampler = view.base_model.module() if self.config.samples else None
        sampling = [t for t in sampler.state_dict().values() if isinstance(t, torch.Tensor)] if sampler is not None else []
        tokens = [b[k] for b in public for k in sorted(b)]
        return memo.digest(_SOURCE, *memo.platform(method.device), self.config,
                           view.federation.batch_size, view.task.kind, view.task.config, state, weights, *sampling, *tokens,
                           view.tokenizer.eos_token_id if view.tokenizer is not None else None,
                           view.tokenizer.pad_token_id if view.tokenizer is not None else None, rng.get_state())

    def _build(self, view: ThreatView, method: OpenHandle, public: list[dict[str, torch.Tensor]], state: torch.Tensor,
               rng: torch.Generator) -> _Inverter:
        c = self.config
        batches = public + _sampled(view, public, c, rng)
        sketch = _Sketch.draw(int(state.numel()), c.features, rng)
        grads, tokens = _per_sequence(method, view, batches, state, sketch)
        classes, targets = _classes(tokens, int(view.task.config.max_length), c.min_count)
        size = c.batch_size or int(view.federation.batch_size)
        single = _unit(grads)
        mean, std = single.mean(0), single.std(0) + 1e-8
        shape = (sketch.size, size, targets.shape[1], len(classes) + 1, c.width, c.token_width)
        with isolated_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=rng))):
            net = _Net(*shape)
        self._fit(net, grads, targets, (mean, std), size, rng)
        return _Inverter(net.eval(), shape, sketch, mean, std, classes)

    def _fit(self, net: _Net, grads: torch.Tensor, targets: torch.Tensor, moments: tuple[torch.Tensor, torch.Tensor],
             size: int, rng: torch.Generator) -> None:
        """Train ``net`` on ``batches`` random batches of the sequences per epoch, drawn with ``rng``."""
        c, (mean, std) = self.config, moments
        optimizer = torch.optim.Adam(net.parameters(), lr=c.lr)
        for _ in range(c.epochs):
            picks = torch.stack([torch.randperm(len(grads), generator=rng)[:size] for _ in range(c.batches)])
            features = (_unit(grads[picks].mean(1)) - mean) / std  # a batch's gradient: its records' mean
            loss = _matched_loss(net(features), targets[picks])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def _sampled(view: ThreatView, public: list[dict[str, torch.Tensor]], config: LearnedConfig,
             rng: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """``config.samples`` one-sequence batches sampled from the public base model (temperature 1), each
    continuing the first ``prompt_tokens`` tokens of a random public record to the task's length and cut
    after its first end-of-sequence token, labelled as the language-modelling task labels its records
    (every token). None for other task kinds, whose records are not bare token sequences."""
    if not config.samples or view.task.kind != TaskKind.LANGUAGE:
        return []
    openings = [b["input_ids"][0, : config.prompt_tokens] for b in public if b["input_ids"].shape[1] > config.prompt_tokens]
    if not openings:
        return []
    model, tokenizer = view.base_model.module(), view.tokenizer
    length, eos = int(view.task.config.max_length), tokenizer.eos_token_id
    picks = torch.randint(len(openings), (config.samples,), generator=rng)
    rows: list[torch.Tensor] = []
    with isolated_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=rng))), torch.no_grad():
        model.eval()
        for start in range(0, config.samples, SAMPLE_CHUNK):
            ids = torch.stack([openings[int(i)] for i in picks[start: start + SAMPLE_CHUNK]])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, top_p=1.0,
                                 temperature=1.0, max_new_tokens=length - config.prompt_tokens,
                                 pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
            rows += [_until_eos(row.cpu(), eos) for row in out]
    return [_language_batch(row, public[0]["input_ids"].device) for row in rows]


SAMPLE_CHUNK = 256
"""Sequences generated per ``generate`` call."""


def _until_eos(row: torch.Tensor, eos: int | None) -> torch.Tensor:
    ends = (row == eos).nonzero() if eos is not None else row.new_zeros((0, 1))
    return row[: int(ends[0]) + 1] if len(ends) else row


def _language_batch(ids: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    """One sequence as the language-modelling task collates it: every token a label."""
    ids = ids.unsqueeze(0)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "position_ids": torch.arange(ids.shape[1]).unsqueeze(0).to(device), "labels": ids.clone().to(device)}


def _per_sequence(method: OpenHandle, view: ThreatView, batches: list[dict[str, torch.Tensor]], state: torch.Tensor,
                  sketch: _Sketch) -> tuple[torch.Tensor, list[list[int]]]:
    """Sketched gradient of each one-sequence batch's loss at ``state``, and its input tokens: ``GRAD_CHUNK``
    sequences at a time through one vmapped call (``bench.client.vmapped``, each sequence with its own copy of
    the trainable tensors), one at a time where the model refuses vmap."""
    named = method.named_trainable
    grads: list[torch.Tensor] = []
    with model_at(method, state) as model, torch.enable_grad():
        for start in range(0, len(batches), GRAD_CHUNK):
            chunk = batches[start: start + GRAD_CHUNK]
            try:
                rows = _chunk_gradients(view, model, named, chunk)
            except Unbatchable:
                rows = [_one_gradient(view, model, named, batch) for batch in chunk]
            grads += [sketch(row) for row in rows]
    tokens = [b["input_ids"][0][b["attention_mask"][0].bool()].tolist() for b in batches]
    return torch.stack(grads), tokens


GRAD_CHUNK = 128
"""Sequences whose gradients one vmapped call computes."""


def _chunk_gradients(view: ThreatView, model: nn.Module, named: list[tuple[str, nn.Parameter]],
                     chunk: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    names = [n for n, _ in named]
    stacked = stacked_copies([p for _, p in named], len(chunk))

    def loss(params: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return view.task.example_losses(Bound(model, params), batch).mean()

    losses = vmapped_call(model, loss, dict(zip(names, stacked)), stack_batches(chunk, model), first_step=True)
    grads = torch.autograd.grad(losses.sum(), stacked)
    return list(torch.cat([g.reshape(len(chunk), -1) for g in grads], dim=1).detach().float().cpu())


def _one_gradient(view: ThreatView, model: nn.Module, named: list[tuple[str, nn.Parameter]],
                  batch: dict[str, torch.Tensor]) -> torch.Tensor:
    loss = view.task.example_losses(model, batch).mean()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [p for _, p in named])]).detach().float().cpu()


def _classes(tokens: list[list[int]], length: int, min_count: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's classes: the tokens the training sequences hold at least ``min_count`` times (class
    ``len`` = no token: past a sequence's end, or a token too rare to learn), and each sequence's class per
    position, padded to ``length``."""
    counts = Counter(t for seq in tokens for t in seq)
    classes = torch.tensor(sorted(t for t, n in counts.items() if n >= min_count), dtype=torch.long)
    index = {int(t): i for i, t in enumerate(classes)}
    none = len(classes)
    targets = torch.full((len(tokens), length), none, dtype=torch.long)
    for row, seq in enumerate(tokens):
        targets[row, : min(len(seq), length)] = torch.tensor([index.get(t, none) for t in seq[:length]])
    return classes, targets


def _unit(grads: torch.Tensor) -> torch.Tensor:
    """Each row at unit length: the direction of an update, whatever its scale (a learning rate, a clipping
    bound, how many steps), is what the decoder reads."""
    return grads / grads.norm(dim=-1, keepdim=True).clamp(min=1e-30)


def _matched_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with each batch's slots matched to its records at the lowest total loss.

    ``logits``: (batches, slots, positions, classes); ``targets``: (batches, records, positions), as many
    records as slots."""
    n, slots, positions, _ = logits.shape
    log_probs = logits.log_softmax(-1)
    # cost[b, s, r] = -sum_p log p(slot s reads record r's token at p); the index never expands the classes
    index = targets.transpose(1, 2).unsqueeze(1).expand(n, slots, positions, slots)
    cost = -log_probs.gather(-1, index).sum(2)
    matched = [linear_sum_assignment(matrix)[1] for matrix in cost.detach().numpy()]  # rows come back in order
    columns = torch.as_tensor(np.stack(matched), dtype=torch.long)
    return cost.gather(2, columns.unsqueeze(-1)).sum() / (n * slots * positions)


@dataclass(frozen=True)
class _Sketch:
    """A count sketch: coordinate i adds sign[i] x g[i] to bucket[i]; identity when the gradient fits."""

    bucket: torch.Tensor | None
    sign: torch.Tensor | None
    size: int

    @classmethod
    def draw(cls, dimension: int, features: int, rng: torch.Generator) -> _Sketch:
        if dimension <= features:
            return cls(None, None, dimension)
        bucket = torch.randint(features, (dimension,), generator=rng)
        sign = torch.randint(2, (dimension,), generator=rng).float() * 2 - 1
        return cls(bucket, sign, features)

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        if self.bucket is None:
            return flat
        return torch.zeros(self.size).index_add_(0, self.bucket, flat * self.sign)


class _Net(nn.Module):
    """Sketch -> per slot and position a code -> token logits through one shared read-out."""

    def __init__(self, features: int, slots: int, positions: int, classes: int, width: int, token_width: int):
        super().__init__()
        self.slots, self.positions, self.token_width = slots, positions, token_width
        self.body = nn.Sequential(nn.Linear(features, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                                  nn.Linear(width, slots * positions * token_width))
        self.read = nn.Linear(token_width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = self.body(x).view(x.shape[0], self.slots, self.positions, self.token_width)
        return self.read(nn.functional.gelu(codes))


@dataclass
class _Inverter:
    net: _Net
    shape: tuple[int, ...]
    """``_Net``'s arguments."""
    sketch: _Sketch
    mean: torch.Tensor
    std: torch.Tensor
    classes: torch.Tensor

    @torch.no_grad()
    def read(self, gradient: torch.Tensor) -> list[list[int]]:
        x = (_unit(self.sketch(gradient.detach().float().cpu())) - self.mean) / self.std
        best = self.net(x.unsqueeze(0))[0].argmax(-1)  # (slots, positions)
        none = len(self.classes)
        return [[int(self.classes[c]) for c in row.tolist() if c != none] for row in best]

    def entry(self) -> dict[str, object]:
        """What the memo keeps (tensors and numbers only)."""
        return {"net": self.net.state_dict(), "shape": list(self.shape), "bucket": self.sketch.bucket,
                "sign": self.sketch.sign, "size": self.sketch.size, "mean": self.mean, "std": self.std,
                "classes": self.classes}

    @classmethod
    def restore(cls, entry: dict) -> _Inverter:
        with isolated_rng(0):  # initial weights replaced at once; the global generator stays untouched
            net = _Net(*entry["shape"])
        net.load_state_dict(entry["net"])
        sketch = _Sketch(entry["bucket"], entry["sign"], int(entry["size"]))
        return cls(net.eval(), tuple(entry["shape"]), sketch, entry["mean"], entry["std"], entry["classes"])
