"""DAGER's two search stages: token candidates from layer 0, sequences grown through layer 1.

Stage 1 (token candidates). The layer-0 input of a token depends on the token and, with learned
absolute positions (GPT-2), on its position: x = LN(wte[v] + wpe[p]). All (v, p) inputs are computed
by feeding rows of one repeated token (row v = [v, v, ...]) and stopping at the layer-0 projection;
a token is a candidate at position p when its input lies in the layer-0 span. Models whose layer-0
input does not depend on the position (RoPE rotates after the projection: x = RMSNorm(embed[v]))
give one bag of candidates used at every position.

Stage 2 (sequences). Causal attention makes the layer-1 input at position i a function of tokens
0..i only, so prefixes grow left to right: every prefix is extended by every candidate for the next
position (one cached prefix pass, then one token per extension), and an extension survives when
its layer-1 input at the new position lies in the layer-1 span. A prefix with no surviving extension
is complete. In a causal LM the final token of a sequence is never an input that receives gradient
(its output has no label), so "complete" means "all but the last token"; ``_labels`` recovers it.

Three guards that the paper's exact-arithmetic setting does not need, found necessary on float32
updates and small widths: (1) a relative test: an extension's layer-1 distance must stay within a
factor of its token's layer-0 distance, which rejects a right token after a wrong prefix (close to
the span, since only the attention output differs, but far above the noise a true input shows);
(2) extensions whose input repeats the previous position's are refused (runs of one token under
RoPE are indistinguishable from a single token); (3) complete sequences are selected greedily by
how much of the span they explain, within the span's rank and the number of sequences the client
can have trained on (``select_sequences``), then refined by the layer-1 gradient the chosen set
leaves unexplained (``refine_by_energy``).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch
from torch import nn

from attacks.inversion._layers import capture_extensions, capture_inputs
from attacks.inversion._span import SpanBasis, SpanCheck

POSITION_BLOCK = 32
REPEAT_TOLERANCE = 1e-4
NOISE_FLOOR = 1e-5
"""float32 distances below this are rounding, not evidence (relative test's smallest reference)."""


@dataclass
class Candidates:
    tokens: list[torch.Tensor]
    """Candidate token ids at each position (position-free models: one entry, used everywhere)."""
    distances: list[torch.Tensor]
    """Each candidate's layer-0 distance: the noise level its true occurrences show at layer 1."""
    position_free: bool

    def at(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = 0 if self.position_free else position
        if index >= len(self.tokens):
            return self.tokens[0][:0], self.distances[0][:0]
        return self.tokens[index], self.distances[index]


@dataclass(frozen=True)
class Growth:
    """How sequences grow: the span checks, the relative test and the beam."""

    checks: tuple[SpanCheck, ...]
    """Span checks every extension must pass: the growth layer's, then any deeper confirming layers'."""
    relative: float
    """An extension's layer distance may exceed its token's layer-0 distance by at most this factor
    (each distance taken relative to its layer's noise floor)."""
    max_length: int
    max_prefixes: int
    noise_ratios: tuple[float, ...] = (1.0,)
    """Per check: its layer's noise floor / layer-0 noise floor (at least 1): true distances scale
    with their layer's noise."""


def token_candidates(model: nn.Module, module: nn.Module, check: SpanCheck, vocab: int, max_positions: int,
                     chunk: int) -> Candidates:
    probe = capture_inputs(model, module, torch.arange(min(vocab, 8))[:, None].repeat(1, 2))
    if torch.allclose(probe[:, 0], probe[:, 1], atol=1e-6, rtol=1e-5):
        tokens, distances = _in_span_tokens(model, module, check, vocab, 0, 1, chunk)
        return _floored(Candidates(tokens, distances, True))
    found = Candidates([], [], False)
    for start in range(0, max_positions, POSITION_BLOCK):
        block = _in_span_tokens(model, module, check, vocab, start, min(start + POSITION_BLOCK, max_positions), chunk)
        for tokens, distances in zip(*block):
            if tokens.numel() == 0:
                return _floored(found)
            found.tokens.append(tokens)
            found.distances.append(distances)
    return _floored(found)


def _in_span_tokens(model: nn.Module, module: nn.Module, check: SpanCheck, vocab: int, start: int, stop: int,
                    chunk: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """For each position in [start, stop): the tokens whose layer-0 input is in the span, and their
    distances (the chance threshold is per position: the whole vocabulary competes for each)."""
    scores, distances = [], []
    for first in range(0, vocab, chunk):
        tokens = torch.arange(first, min(first + chunk, vocab))
        inputs = capture_inputs(model, module, tokens[:, None].repeat(1, stop), chunk=chunk)[:, start:stop]
        score, distance = check.measure(inputs, vocab)  # (tokens, positions)
        scores.append(score.cpu())
        distances.append(distance.cpu())
    score, distance = torch.cat(scores), torch.cat(distances)
    hits = [torch.nonzero(score[:, p] < 1.0).reshape(-1) for p in range(score.shape[1])]
    return hits, [distance[h, p] for p, h in enumerate(hits)]


def _floored(found: Candidates) -> Candidates:
    """Reference distances no smaller than the median over all candidates: a token that occurs in
    several sequences at one position has one layer-0 input with their gradients summed (a tiny
    distance), but a distinct, noisier layer-1 input per sequence."""
    every = torch.cat(found.distances) if found.distances else torch.zeros(0)
    if every.numel():
        floor = float(every.median())
        found.distances = [d.clamp_min(floor) for d in found.distances]
    return found


@dataclass
class Grown:
    sequences: list[list[int]]
    worst: list[float]
    """Per sequence: the largest ratio of an extension's layer-1 distance to its layer-0 reference
    (how close the weakest link came to the relative threshold)."""


def grow_sequences(model: nn.Module, modules: list[nn.Module], growth: Growth, candidates: Candidates) -> Grown:
    """Complete sequences (all tokens that received gradient), by left-to-right extension; ``modules``
    are the projections whose inputs ``growth.checks`` judge, in the same order."""
    tokens, reference = candidates.at(0)
    first = [capture_inputs(model, module, tokens[:, None])[:, -1] for module in modules]
    ok, ratio = _passes(growth, first, None, reference)
    prefixes, worst = _beam(tokens[:, None][ok], ratio[ok], growth.max_prefixes)
    done = Grown([], [])
    for position in range(1, growth.max_length):
        following, reference = candidates.at(position)
        if prefixes.shape[0] == 0 or following.numel() == 0:
            break
        count, width = prefixes.shape[0], following.numel()
        captured = capture_extensions(model, modules, prefixes, following)
        ok, ratio = _passes(growth, [c[0] for c in captured], captured[0][1], reference.repeat(count))
        ended = ~ok.view(count, width).any(1)
        done.sequences += prefixes[ended].tolist()
        done.worst += worst[ended].tolist()
        grown = torch.cat([prefixes.repeat_interleave(width, 0), following.repeat(count)[:, None]], dim=1)
        prefixes, worst = _beam(grown[ok], torch.maximum(worst.repeat_interleave(width), ratio)[ok], growth.max_prefixes)
    done.sequences += prefixes.tolist()
    done.worst += worst.tolist()
    return done


def select_sequences(grown: Grown, rank: int, limit: int) -> list[list[int]]:
    """The sequences that best explain the span, at most ``limit`` of them.

    Each distinct prefix is one layer-1 input (a node of the sequences' trie) and the span holds at
    most ``rank`` of them. Sequences are admitted greedily by how many new nodes they add (a true
    sequence adds its whole length; a spurious branch off a true prefix adds a token or two), ties
    broken by the weakest link (``Grown.worst``), while the trie stays within the rank and the count
    within ``limit`` (how many sequences the client can have trained on). Gains only shrink as nodes
    are taken, so a stale heap entry is re-scored and pushed back (lazy greedy).
    """
    prefixes = [{tuple(s[: k + 1]) for k in range(len(s))} for s in grown.sequences]
    heap = [(-len(p), grown.worst[i], i) for i, p in enumerate(prefixes)]
    heapq.heapify(heap)
    nodes: set[tuple[int, ...]] = set()
    kept: list[list[int]] = []
    while heap and len(kept) < limit:
        stale_gain, worst, i = heapq.heappop(heap)
        gain = len(prefixes[i] - nodes)
        if gain != -stale_gain:
            if gain:
                heapq.heappush(heap, (-gain, worst, i))
            continue
        if kept and len(nodes) + gain > rank:
            break
        nodes |= prefixes[i]
        kept.append(grown.sequences[i])
    return kept


def _passes(growth: Growth, lasts: list[torch.Tensor], previous: torch.Tensor | None,
            reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which extensions survive, and each one's largest ratio of layer distance to layer-0 distance.

    Two tests per checked layer: the absolute one (``SpanCheck``), and a relative one against the
    new token's own layer-0 distance ``reference``. A wrong prefix followed by a token that is right
    for this position in another sequence differs from a true input only by what attention brings
    in, so its input sits close to the span, yet much farther than the token's layer-0 input (whose
    distance is float noise); a true extension stays at the noise level. An extension whose
    growth-layer input repeats the previous position's (``previous``) is refused too (``_repeats``).
    """
    ok = torch.ones(lasts[0].shape[0], dtype=torch.bool)
    worst = torch.zeros(lasts[0].shape[0])
    for check, noise_ratio, last in zip(growth.checks, growth.noise_ratios, lasts):
        score, distance = check.measure(last, last.shape[0])
        ratio = distance.cpu() / (noise_ratio * reference).clamp_min(NOISE_FLOOR)
        ok &= (score.cpu() < 1.0) & (ratio <= growth.relative)
        worst = torch.maximum(worst, ratio)
    if previous is not None:
        ok &= ~_repeats(lasts[0], previous).cpu()
    return ok, worst


def _repeats(last: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """The new position's input equals the previous one's (a run of one token under RoPE: attention
    over identical keys and values returns the same value wherever it looks). Such an extension
    adds no evidence: the gradient cannot tell "a" from "a a a", and accepting it loops forever."""
    return (last - previous).norm(dim=-1) <= REPEAT_TOLERANCE * last.norm(dim=-1)


def _beam(sequences: torch.Tensor, worst: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``limit`` prefixes, those whose weakest link is strongest."""
    if sequences.shape[0] <= limit:
        return sequences, worst
    keep = torch.argsort(worst)[:limit].sort().values
    return sequences[keep], worst[keep]


NEW_DIRECTION = 1e-4
"""A candidate input adds a direction when it reaches this far (unit inputs) beyond the chosen span:
above float32 input precision, below the distance a different prefix or position makes."""


class _Energy:
    """The layer-1 gradient that a set of sequences leaves unexplained.

    Each informative span's gradient (its singular directions scaled by their singular values) is
    projected off the span of the set's layer-1 inputs; what remains is the unexplained energy. True
    sequences leave rounding noise; a wrong prefix leaves the true input's whole direction behind,
    even where that direction carries little more than the noise (a confidently predicted token).
    """

    def __init__(self, check: SpanCheck, inputs: list[torch.Tensor]):
        useful = [b for b in check.bases if b.informative]
        self.gradients = [b.weighted for b in useful]
        self.noise = sum(b.cut**2 for b in useful)
        self.directions = [_unit_rows(_mapped(inputs, b)) for b in useful]  # per span: (n, length, dim)

    def gains(self, chosen: list[int]) -> torch.Tensor:
        """(n,) energy each candidate would explain on top of the ``chosen`` candidates."""
        total = torch.zeros(self.directions[0].shape[0], dtype=torch.float64)
        for gradient, directions in zip(self.gradients, self.directions):
            basis = _orthonormal(directions[chosen].reshape(-1, directions.shape[-1]))  # (k, dim)
            residual = gradient - basis.T @ (basis @ gradient)
            new = _new_directions(directions, basis)
            total += torch.einsum("nld,dr->nlr", new, residual).pow(2).sum((1, 2)).cpu()
        return total


def refine_by_energy(sequences: list[list[int]], kept: list[list[int]], check: SpanCheck,
                     inputs: list[torch.Tensor], limit: int, swaps: int = 8) -> list[list[int]]:
    """Improve a selection of ``sequences`` (``kept``) by the layer-1 gradient it explains (``_Energy``).

    Two moves, each taken only when it explains more than one noise-level direction's energy: add
    the candidate that explains most (while fewer than ``limit`` are kept), and swap a kept sequence
    for the candidate that explains most in its place. Per-extension distances cannot tell a true
    input whose gradient sank towards the noise from a wrong prefix's input; the joint residual can.
    """
    if not sequences or not kept:
        return kept
    energy = _Energy(check, inputs)
    if not energy.gradients:
        return kept
    index = {tuple(s): i for i, s in enumerate(sequences)}
    chosen = [index[tuple(s)] for s in kept]
    while len(chosen) < limit:
        gains = energy.gains(chosen)
        gains[chosen] = -1.0
        best = int(torch.argmax(gains))
        if float(gains[best]) <= energy.noise:
            break
        chosen.append(best)
    for _ in range(swaps):
        if not _swap_pass(energy, chosen):
            break
    return [sequences[i] for i in chosen]


def _swap_pass(energy: _Energy, chosen: list[int]) -> bool:
    """The single swap that explains most more (of all kept slots), if it beats the noise: swapping
    slot by slot would let a wrong member push out a true one that it half duplicates."""
    best_gain, best_slot, best_candidate = energy.noise, -1, -1
    for slot in range(len(chosen)):
        gains = energy.gains(chosen[:slot] + chosen[slot + 1 :])
        own = float(gains[chosen[slot]])
        gains[chosen] = -1.0
        candidate = int(torch.argmax(gains))
        if float(gains[candidate]) - own > best_gain:
            best_gain, best_slot, best_candidate = float(gains[candidate]) - own, slot, candidate
    if best_slot < 0:
        return False
    chosen[best_slot] = best_candidate
    return True


def sequence_inputs(model: nn.Module, module: nn.Module, sequences: list[list[int]]) -> list[torch.Tensor]:
    """Each sequence's layer inputs at every position ((length, width) each), batched by length."""
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(sequences):
        by_length.setdefault(len(s), []).append(i)
    found: list[torch.Tensor] = [torch.zeros(0)] * len(sequences)
    for indices in by_length.values():
        captured = capture_inputs(model, module, torch.tensor([sequences[i] for i in indices]))
        for i, rows in zip(indices, captured):
            found[i] = rows.double()
    return found


def _mapped(inputs: list[torch.Tensor], basis: SpanBasis) -> torch.Tensor:
    """(n, longest, dim): inputs through the basis' transform, zero rows padding shorter sequences."""
    longest = max(x.shape[0] for x in inputs)
    mapped = [x if basis.transform is None else x @ basis.transform.double().T for x in inputs]
    out = mapped[0].new_zeros(len(mapped), longest, mapped[0].shape[1])
    for i, x in enumerate(mapped):
        out[i, : x.shape[0]] = x
    return out


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def _orthonormal(rows: torch.Tensor) -> torch.Tensor:
    """(k, dim) orthonormal rows spanning ``rows`` beyond float32 input precision."""
    if rows.shape[0] == 0:
        return rows
    _, singular, right = torch.linalg.svd(rows, full_matrices=False)
    return right[singular > NEW_DIRECTION]


def _new_directions(directions: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning what each candidate's inputs add beyond ``basis`` (zero rows where
    they add nothing beyond float32 input precision)."""
    if basis.shape[0]:
        directions = directions - (directions @ basis.T) @ basis
    _, singular, rows = torch.linalg.svd(directions, full_matrices=False)  # rows: (n, length, dim)
    return rows * (singular > NEW_DIRECTION)[..., None]
