"""A malicious server's imprint attack on bottleneck adapters: it chooses the broadcast adapter and
layer-norm weights so that one client's FedSGD gradient hands it the batch's adapter inputs exactly.

Why adapters need a malicious server. A Houlsby adapter is ``h + up(relu(down h))`` with ``up`` zero at
initialisation, so an honest server's round-1 gradient on ``down`` is exactly zero and ``up``'s is a sum
over the batch in R^size: nothing of one example is isolated (``inversion-decode``, the honest attack,
stays below the floor). But the server broadcasts every trainable parameter, adapters and layer norms
alike, and may choose their values.

The imprint (Fowl, Geiping, Czaja, Goldblum, Goldstein 2022, "Robbing the Fed: Directly Obtaining
Private Data in Federated Learning with Modified Models", ICLR; Boenisch, Dziedzic, Schuster, Shamsabadi,
Shumailov, Papernot 2023, "When the Curious Abandon Honesty: Federated Learning Is Not Private",
EuroS&P, for trap weights). An adapter's ``down`` + ReLU is exactly Fowl's imprint layer: every row of
``down`` is set to one direction ``w`` and the biases to minus increasing thresholds ``q_0 < ... < q_{m-1}``
(quantiles of ``w . h`` over public inputs), so row ``j`` fires for the inputs with ``w . h > q_j``. Every
column of ``up`` is set to one small vector ``u`` (``scale``), so each firing row receives the same
upstream scalar ``s_i = u . dL/d(out_i)`` from input ``i``. Then row ``j``'s weight gradient minus row
``j+1``'s is ``sum s_i h_i`` over the inputs in bin ``(q_j, q_{j+1}]``, and the same difference of the bias
gradients is ``sum s_i``: their ratio is exactly the input ``h`` of an example alone in its bin (or of
several identical ones). The top row's bin is unbounded above.

Making each recovered input name its token and position (this module's addition). The adapter sits
on a sublayer's output, a function of the whole prefix through attention. The server also broadcasts
the pre-attention layer norms: it sets their weights to zero, so every attention sublayer sees the same
input at every position and outputs a constant; each block's feed-forward sublayer, hence its adapter's
input, is then a function of that position's token and position alone (checked numerically on every
adapter it traps: a public batch's inputs equal those of the same tokens run one at a time, to float32
rounding; adapters whose inputs fail it, or are constant, as those after attention are, stay honest).
The attacker tabulates every (token, position) input through the broadcast model and matches each
recovered ``h`` to its nearest entry (a true input: ~1e-6 to 5e-4 relative, the float32 cancellation of
the row differences; ``match_tolerance`` 1e-3). Every feed-forward adapter of every block is trapped with
its own random direction, so an input that shares a bin in one adapter may be alone in another's.
Checked on the zoo tiny-gpt2 (4 blocks) with the pre-attention norms zeroed: the feed-forward adapters'
inputs on a batch of two 24-token notes equal those of the same tokens run alone to 2.4e-7.

Peeling (this module's addition, the span check of DAGER, Petrov et al. 2024). A bin holding known
inputs ``h_1..h_n`` (found alone in another adapter's bins, or in an earlier pass) and one unknown ``h``
gives ``dW - db h_1 = sum_k s_k (h_k - h_1) + s (h - h_1)``: ``h - h_1`` lies in the span of that residual and
of the ``h_k - h_1``, and the table candidate in it (within the bin's range of ``w . h``) is the unknown.
Passes repeat while they find inputs. Measured on one batch of two notes at size 16 (seed 0): the
first pass names 14 of the 36 distinct (token, position) inputs, peeling 32, none wrong.

Sequences. The recovered tokens say where they sit but not, in a batch of several sequences, which
sequence each belongs to. With attention constant, a position's loss couples only its token and the
next one, so the gradient identifies which tokens follow which at each position, but not how two
segments separated by a position every sequence shares (the template's words) link: that is not in
the gradient at all (the true batch and the batch with its suffixes swapped at such a position have the
same gradient to float32 rounding). Tokens are assigned in id order and then linked greedily by
suffix swaps, each judged by the cosine between the candidate batch's gradient at the broadcast state
and the observed one; segments between shared positions stay arbitrarily linked, so at batch size > 1
a sequence is exact only by luck, while its ROUGE-1 counts every recovered token. Leaving the last
block's attention live (so that the loss does depend on the linking) was measured and dropped: its
adapters can no longer be tabulated (recovery at size 16 fell from 32 to 22 of 36 inputs), the label
step below no longer holds, and the cosine then preferred wrong linkings whose wrong last tokens it
explained better (0.928 against 0.919 for the truth). Positions where nothing was recovered are filled
with the public template's token (the most common token at that position among public records, the
prior the floor's template guess uses), when ``fill`` is on.

The last token of a sequence only labels: no gradient reaches its input. It is recovered from the bias
gradients (``last_labels``): every bin's ``db`` is ``sum s_i`` with ``s_i = c (p_i - e_y) . (J_i u)`` a function of
the input's (token, position) and its label ``y``, so the assembled batch predicts every share but the last
input's, and the label ``v`` whose share ``c (p . Ju - (Ju)_v)`` fits the residual of every bin holding a last
input alone (relative error below ``label_tolerance``) replaces the filled token.

Departures from the papers: Fowl et al. place bins at quantiles of a fitted Gaussian (or Laplace) for
``w . x`` on image inputs; here the quantiles are empirical, over the distinct (token, position) inputs of
public records (never the client's), and the imprint layer is the method's own adapter rather than a
module added in front of the model. Their sequence assembly for text (via positional embeddings in a
separate imprint) is replaced by the layer-norm trap and the table match above. The malicious change
costs the model its attention for that round (utility of that round's model is not the point; the run
records it). Refuses (``IncompatibleError``) a method without trainable ReLU bottleneck adapters and
trainable pre-attention layer norms (LoRA, prompt tuning, full fine-tuning), and training of more than
one local step (the imprint needs one gradient). The Flower engines do not call
``Attack.tamper_broadcast``; there the broadcast is untampered and the attack reports it is not applicable.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from attacks.inversion._common import (
    Target,
    TargetConfig,
    configure_vantage,
    is_language_model,
    model_at,
    observed_gradient,
    reconstruct,
    trainable_names,
)
from bench.api.access import Access
from bench.api.attack import Attack, ServerHold
from bench.api.config import doc
from bench.api.errors import IncompatibleError
from bench.api.handles import OpenHandle, TaskSpec
from bench.api.predictions import Reconstruction
from bench.api.registry import ATTACKS
from bench.api.transcript import FederationSettings, ThreatView
from bench.api.vocabulary import AttackFamily, AttackRole, Record, Vantage

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import PreTrainedTokenizerBase

Collate = Callable[[list[Record]], dict[str, torch.Tensor]]

LOCALITY_TOLERANCE = 1e-4
"""An adapter is trapped only when its inputs on a public batch equal those of the same tokens run one at
a time within this x their largest norm (float32 rounding is ~1e-7; a prefix-dependent input is ~1)."""


@dataclass(frozen=True, kw_only=True)
class TrapConfig(TargetConfig):
    scale: float = doc("Norm of the vector every column of a trapped adapter's up projection is set to (small: "
                       "the broadcast model's outputs barely move, and every bin's upstream gradient is the same).", 1e-2)
    match_tolerance: float = doc("A recovered input names a (token, position) when its distance to that candidate's "
                                 "input is below this x the candidate's norm (a true one: ~1e-6).", 1e-3)
    bin_floor: float = doc("A bin counts when its bias-gradient difference exceeds this x the largest (an empty "
                           "bin differs only by rounding).", 1e-6)
    public_records: int = doc("Public records whose distinct (token, position) inputs place the bins.", 64)
    fill: bool = doc("Fill positions where nothing was recovered with the public template's token there.", True)
    link_passes: int = doc("Greedy passes that link each position's recovered tokens across positions into the "
                           "batch's sequences by the gradient match (0: in token-id order).", 2)
    max_assignments: int = doc("Most permutations of the sequences' suffixes tried at one cut per pass.", 24)
    labels: bool = doc("Recover each sequence's last token (a label only, no input gradient) from what its bins' "
                       "bias gradients leave unexplained by the assembled batch.", True)
    label_tolerance: float = doc("A last-token candidate is kept when it explains those residuals to within this "
                                 "relative error (else the template's token stays).", 1e-2)
    peel_passes: int = doc("Passes after the first that recover a bin's one unknown input from its known ones.", 4)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale <= 0 or self.match_tolerance <= 0 or self.bin_floor < 0:
            raise ValueError("scale and match_tolerance must be positive, bin_floor >= 0")
        if self.public_records < 1 or self.link_passes < 0 or self.max_assignments < 1 or self.peel_passes < 0:
            raise ValueError("public_records and max_assignments must be >= 1, link_passes and peel_passes >= 0")


@dataclass(frozen=True)
class Bottleneck:
    """One adapter as the attack sees it: the module and its trainable parameters' names."""

    module: nn.Module
    down_weight: str
    down_bias: str
    up_weight: str
    up_bias: str

    @property
    def rows(self) -> int:
        return int(self.module.down.weight.shape[0])


@dataclass(frozen=True)
class Found:
    """A recovered input: its token, its position, and which adapter gave it."""

    token: int
    position: int
    adapter: int
    distance: float


@ATTACKS.register("inversion-trap")
class TrapInversion(Attack):
    """Malicious server: imprint bins in the broadcast adapters, layer norms that make inputs (token, position)
    functions; each bin alone recovers one input exactly (Fowl et al. 2022 on Houlsby adapters)."""

    vantage = Vantage.SERVER
    family = AttackFamily.INVERSION
    role = AttackRole.MALICIOUS_INVERSION  # a stronger threat model than the honest server: cells of its own
    access = frozenset({Access.WEIGHTS, Access.GRADIENTS})
    needs = frozenset({"client_updates", "global_states"})
    changes_training = True  # it chooses what clients train from
    tampers_broadcast = True
    Config = TrapConfig

    def __init__(self, config: TrapConfig):
        super().__init__(config)
        configure_vantage(self, config)

    def check_federation(self, federation: FederationSettings) -> str | None:
        if federation.protocol != "fedsgd" and int(federation.local_steps) > 1:
            return (f"inversion-trap reads one gradient (FedSGD or one local step); this federation trains "
                    f"{federation.local_steps} local steps")
        return None

    # --- the malicious broadcast ----------------------------------------------------------------
    def tamper_broadcast(self, round_index: int, state: torch.Tensor, server: ServerHold,
                         rng: torch.Generator) -> torch.Tensor:
        if self.config.rounds and round_index not in self.config.rounds:
            return state
        method, model = server.method, server.method.model
        names = {id(p): n for n, p in method.named_trainable}
        adapters, norms = find_bottlenecks(model, names), pre_attention_norms(model, names)
        if not adapters or not norms:
            raise IncompatibleError(f"inversion-trap needs trainable ReLU bottleneck adapters and pre-attention layer "
                                    f"norms; method {method.name} has {len(adapters)} and {len(norms)}")
        flat = state.clone()
        named = method.unflatten(flat)  # views into flat: writing them writes the broadcast
        for norm in norms:
            named[norm].zero_()
        ids, positions = public_inputs(server.public[: self.config.public_records], server.collate)
        trapped = 0
        for adapter in adapters:
            method.set_flat(flat)  # each adapter's inputs through the adapters already trapped
            if not _position_local(model, adapter, server.public[: min(8, len(server.public))], server.collate):
                continue
            inputs = _inputs_one_at_a_time(model, [adapter], ids, positions)[0].double()
            if float((inputs - inputs[0]).abs().max()) <= LOCALITY_TOLERANCE * float(inputs.abs().max()):
                continue  # a constant input (after attention): nothing to bin
            _imprint(named, adapter, inputs, self.config.scale, rng)
            trapped += 1
        method.set_flat(state)
        if not trapped:
            raise IncompatibleError("inversion-trap: no adapter's input became a function of (token, position) "
                                    "with the pre-attention norms zeroed")
        return flat

    # --- reading the client's gradient -----------------------------------------------------------
    def run(self, view: ThreatView, rng: torch.Generator) -> Reconstruction:
        return reconstruct(view, self.config, lambda target: self.invert(view, target))

    def invert(self, view: ThreatView, target: Target) -> list[list[int]]:
        method = view.final_model
        if not is_language_model(method.model):
            return []
        names = trainable_names(method)
        broadcast = method.unflatten(target.global_before)
        adapters = [a for a in find_bottlenecks(method.model, names) if bool(broadcast[a.up_weight].abs().max() > 0)]
        if not adapters:
            raise IncompatibleError("the broadcast carries no trap (an engine that does not call tamper_broadcast)")
        gradient = observed_gradient(target.update.to(target.global_before.device), view.federation)
        grads = method.unflatten(gradient)
        length = _position_limit(method.model, view.task.config.max_length)
        with model_at(method, target.global_before) as model:
            found = self.recover(model, adapters, broadcast, grads, length)
            template = public_template(view.auxiliary[: self.config.public_records], view.task, view.tokenizer,
                                       method.device)
            layout = _Assembly(found, template, target.most_sequences(view.federation), self.config.fill)
            sequences = layout.initial()
            if self.config.link_passes and len(sequences) > 1:
                sequences = layout.link(model, method, view.task, sequences, gradient, self.config)
            if self.config.labels and sequences and len({len(s) for s in sequences}) == 1 and len(sequences[0]) > 1:
                bins = [Bins.of(grads[a.down_weight], grads[a.down_bias], broadcast[a.down_weight],
                                broadcast[a.down_bias], self.config.bin_floor) for a in adapters]
                sequences = last_labels(model, adapters, broadcast, bins, sequences, self.config.label_tolerance)
        return [s for s in sequences if s]

    def recover(self, model: nn.Module, adapters: list[Bottleneck], broadcast: dict[str, torch.Tensor],
                grads: dict[str, torch.Tensor], length: int) -> list[Found]:
        """Every input alone in its bin, named by its nearest (token, position) candidate; then, pass after
        pass, every input that is the one unknown of a bin whose other inputs are known (``peel``)."""
        bins = [Bins.of(grads[a.down_weight], grads[a.down_bias], broadcast[a.down_weight], broadcast[a.down_bias],
                        self.config.bin_floor) for a in adapters]
        known: dict[tuple[int, int], Found] = {}
        pending = [set(range(b.count)) for b in bins]
        self._tables: dict[int, list[torch.Tensor]] = {}
        for _ in range(1 + self.config.peel_passes):
            found = self._pass(model, adapters, bins, pending, known, length)
            if not found:
                break
            for f in found:
                known.setdefault((f.position, f.token), f)
        self._tables = {}
        return list(known.values())

    def _table(self, model: nn.Module, adapters: list[Bottleneck], position: int) -> list[torch.Tensor]:
        """Every trapped adapter's input for every token at ``position`` (kept for the next passes)."""
        if position not in self._tables:
            weight = model.get_input_embeddings().weight
            tokens = torch.arange(weight.shape[0], device=weight.device)
            self._tables[position] = [t.double() for t in
                                      _inputs_one_at_a_time(model, adapters, tokens, torch.full_like(tokens, position))]
        return self._tables[position]

    def _pass(self, model: nn.Module, adapters: list[Bottleneck], bins: list[Bins], pending: list[set[int]],
              known: dict[tuple[int, int], Found], length: int) -> list[Found]:
        """One sweep over the (token, position) table: for each unresolved bin, the candidate that is its one
        unknown input given the known inputs that fall in it (none known: the bin's ratio itself)."""
        device = model.get_input_embeddings().weight.device
        pairs = sorted(known)
        held = (_inputs_one_at_a_time(model, adapters, torch.tensor([t for _, t in pairs], device=device),
                                      torch.tensor([p for p, _ in pairs], device=device)) if pairs else None)
        tests = [[BinTest.of(bins[k], j, None if held is None else held[k].double(), pairs) for j in sorted(pending[k])]
                 for k in range(len(adapters))]
        best: dict[tuple[int, int], Found] = {}
        for position in range(length):
            known_here = {t for p, t in pairs if p == position}
            for k, inputs in enumerate(self._table(model, adapters, position)):
                free = [t for t in tests[k] if t.basis is None]  # no known input in the bin: one batched match
                spanned = [t for t in tests[k] if t.basis is not None]
                scored = [(t, d) for t, d in zip(free, _ratio_distances(free, inputs, known_here))]
                scored += [(t, t.distances(inputs, known_here)) for t in spanned]
                for test, distance in scored:
                    value, token = distance.min(dim=0)
                    value = float(value)
                    if value <= self.config.match_tolerance and value < best.get((k, test.index), _NONE).distance:
                        best[(k, test.index)] = Found(int(token), position, k, value)
        for k, j in best:
            pending[k].discard(j)
        return list(best.values())


_NONE = Found(-1, -1, -1, float("inf"))


def _ratio_distances(tests: list[BinTest], inputs: torch.Tensor, known_tokens: set[int]) -> list[torch.Tensor]:
    """``BinTest.distances`` of many bins without known inputs at once (one distance matrix)."""
    if not tests:
        return []
    origins = torch.stack([t.origin for t in tests])
    distance = torch.cdist(origins, inputs) / inputs.norm(dim=1).clamp_min(1e-12).unsqueeze(0)
    projected = inputs @ tests[0].direction
    low = torch.tensor([t.low for t in tests], dtype=projected.dtype, device=projected.device)
    high = torch.tensor([t.high for t in tests], dtype=projected.dtype, device=projected.device)
    outside = (projected[None, :] <= low[:, None]) | (projected[None, :] > high[:, None])
    if known_tokens:
        outside[:, torch.tensor(sorted(known_tokens), device=inputs.device)] = True
    return list(distance.masked_fill(outside, float("inf")).unbind(0))


@dataclass(frozen=True)
class Bins:
    """One trapped adapter's non-empty bins: gradient differences and bounds on ``w . h``."""

    direction: torch.Tensor
    d_weight: torch.Tensor
    d_bias: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.d_bias.numel())

    @classmethod
    def of(cls, weight_grad: torch.Tensor, bias_grad: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
           floor: float) -> Bins:
        order = torch.argsort(-bias.double())  # thresholds -bias, increasing
        thresholds = -bias.double()[order]
        weights, biases = weight_grad.double()[order], bias_grad.double()[order]
        d_weight = weights - torch.cat([weights[1:], torch.zeros_like(weights[:1])])
        d_bias = biases - torch.cat([biases[1:], torch.zeros_like(biases[:1])])
        largest = float(d_bias.abs().max()) if d_bias.numel() else 0.0
        keep = d_bias.abs() > floor * largest if largest > 0 else torch.zeros_like(d_bias, dtype=torch.bool)
        high = torch.cat([thresholds[1:], thresholds.new_full((1,), float("inf"))])
        return cls(F.normalize(weight.double()[0], dim=0), d_weight[keep], d_bias[keep], thresholds[keep], high[keep])


@dataclass(frozen=True)
class BinTest:
    """How far a candidate input is from being a bin's one unknown input.

    No known input in the bin: the bin's ratio is the input (Fowl et al.). Known inputs ``h_1..h_n`` in it
    (from other adapters' bins or earlier passes): ``dW - db h_1 = sum_k s_k (h_k - h_1) + s (h - h_1)``, so
    ``h - h_1`` lies in the span of that residual and the ``h_k - h_1`` (a span check, as in DAGER)."""

    index: int
    origin: torch.Tensor
    basis: torch.Tensor | None
    low: float
    high: float
    direction: torch.Tensor

    @classmethod
    def of(cls, bins: Bins, j: int, held: torch.Tensor | None, pairs: list[tuple[int, int]]) -> BinTest:
        low, high = float(bins.low[j]), float(bins.high[j])
        inside = [] if held is None else [i for i in range(len(pairs)) if low < float(held[i] @ bins.direction) <= high]
        if not inside:
            return cls(j, bins.d_weight[j] / bins.d_bias[j], None, low, high, bins.direction)
        origin = held[inside[0]]
        spanning = [bins.d_weight[j] - bins.d_bias[j] * origin] + [held[i] - origin for i in inside[1:]]
        basis, _ = torch.linalg.qr(torch.stack(spanning, dim=1))
        return cls(j, origin, basis, low, high, bins.direction)

    def distances(self, inputs: torch.Tensor, known_tokens: set[int]) -> torch.Tensor:
        """Per candidate, its distance to the bin's solution over its norm; inf outside the bin's range."""
        offset = inputs - self.origin
        if self.basis is not None:
            offset = offset - (offset @ self.basis) @ self.basis.T
        distance = offset.norm(dim=1) / inputs.norm(dim=1).clamp_min(1e-12)
        projected = inputs @ self.direction
        outside = (projected <= self.low) | (projected > self.high)
        if known_tokens:
            outside[torch.tensor(sorted(known_tokens), device=inputs.device)] = True
        return distance.masked_fill(outside, float("inf"))


# --- the model's parts -------------------------------------------------------------------------------
def find_bottlenecks(model: nn.Module, names: dict[int, str]) -> list[Bottleneck]:
    """Trainable ``up(relu(down h))`` modules (``bench.methods.adapter.Bottleneck``, found by shape, not by
    class: plugins import only the api), in module order."""
    found = []
    for module in model.modules():
        children = dict(module.named_children())
        down, up, act = (children.get(n) for n in ("down", "up", "act"))
        if not (isinstance(down, nn.Linear) and isinstance(up, nn.Linear) and isinstance(act, nn.ReLU)):
            continue
        parts = [down.weight, down.bias, up.weight, up.bias]
        if any(p is None or id(p) not in names for p in parts):
            continue
        found.append(Bottleneck(module, *(names[id(p)] for p in parts)))
    return found


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def pre_attention_norms(model: nn.Module, names: dict[int, str]) -> list[str]:
    """The trainable weight of each adapter-holding block's first norm (GPT-2 ``ln_1``, Llama
    ``input_layernorm``: the one in front of attention); the numerical check in ``tamper_broadcast``
    confirms that zeroing them made the adapters' inputs position-local."""
    blocks = [m for m in model.modules() if any(_holds_bottleneck(c) for c in m.children())]
    weights = []
    for block in blocks:
        norm = next((c for c in block.children() if _is_norm(c)), None)
        weight = dict(norm.named_parameters(recurse=False)).get("weight") if norm is not None else None
        if isinstance(weight, nn.Parameter) and id(weight) in names:
            weights.append(names[id(weight)])
    return weights


def _holds_bottleneck(module: nn.Module) -> bool:
    children = dict(module.named_children())
    return all(isinstance(children.get(n), t) for n, t in (("down", nn.Linear), ("up", nn.Linear), ("act", nn.ReLU)))


def _position_limit(model: nn.Module, task_length: int) -> int:
    config = model.config
    settings = vars(config)  # a transformers config: GPT-2 names its limit n_positions, Llama max_position_embeddings
    limit = settings.get("n_positions") or settings.get("max_position_embeddings") or task_length
    return min(int(limit), int(task_length))


def _inputs_one_at_a_time(model: nn.Module, adapters: list[Bottleneck], tokens: torch.Tensor,
                          positions: torch.Tensor) -> list[torch.Tensor]:
    """Each adapter's input for every (token, position) pair run as a sequence of one token."""
    captured: dict[int, torch.Tensor] = {}
    hooks = [a.module.register_forward_pre_hook(lambda _m, args, k=k: captured.__setitem__(k, args[0].detach()))
             for k, a in enumerate(adapters)]
    try:
        with torch.no_grad():
            ids = tokens.reshape(-1, 1)
            model(input_ids=ids, position_ids=positions.reshape(-1, 1).to(ids.device), attention_mask=torch.ones_like(ids))
    finally:
        for hook in hooks:
            hook.remove()
    return [captured[k].reshape(ids.shape[0], -1) for k in range(len(adapters))]


def _position_local(model: nn.Module, adapter: Bottleneck, records: list[Record], collate: Collate) -> bool:
    """True when the adapter's inputs on a public batch equal those of its tokens run one at a time."""
    if not records:
        return False
    batch = collate(records)
    captured: list[torch.Tensor] = []
    hook = adapter.module.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=_positions(batch))
    finally:
        hook.remove()
    mask = batch["attention_mask"].bool()
    together = captured[0][mask]
    alone = _inputs_one_at_a_time(model, [adapter], batch["input_ids"][mask], _positions(batch)[mask])[0]
    scale = float(together.abs().max())
    return scale > 0 and float((together - alone).abs().max()) <= LOCALITY_TOLERANCE * scale


def _positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's position ids (right padding: 0, 1, ... when the collate does not spell them out)."""
    ids = batch["input_ids"]
    if "position_ids" in batch:
        return batch["position_ids"]
    return torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand_as(ids)


def public_inputs(records: list[Record], collate: Collate) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct (token, position) pairs of public records (where the server places its bins)."""
    if not records:
        raise IncompatibleError("inversion-trap places its bins on public records; the task has none")
    batch = collate(records)
    mask = batch["attention_mask"].bool()
    pairs = torch.stack([batch["input_ids"][mask], _positions(batch)[mask]], dim=1).unique(dim=0)
    return pairs[:, 0], pairs[:, 1]


def _imprint(named: dict[str, torch.Tensor], adapter: Bottleneck, inputs: torch.Tensor, scale: float,
             rng: torch.Generator) -> None:
    """Rows share one random direction; thresholds at empirical quantiles of the public projections; the
    up projection's columns all equal one small random vector."""
    rows, width = named[adapter.down_weight].shape
    direction = F.normalize(torch.randn(width, generator=rng, dtype=torch.float64), dim=0).to(inputs.device)
    projected = inputs @ direction
    levels = torch.arange(rows, dtype=torch.float64, device=inputs.device) / rows
    thresholds = torch.quantile(projected, levels)
    gap = float(thresholds[1] - thresholds[0]) if rows > 1 else float(projected.std().clamp_min(1.0))
    thresholds[0] = thresholds[0] - max(gap, 1e-3)  # the least public input still fires the first row
    column = F.normalize(torch.randn(named[adapter.up_weight].shape[0], generator=rng, dtype=torch.float64), dim=0)
    target = named[adapter.down_weight]
    target.copy_(direction.to(target.dtype).expand(rows, width))
    named[adapter.down_bias].copy_((-thresholds).to(target.dtype))
    named[adapter.up_weight].copy_((scale * column).to(target.dtype).unsqueeze(1).expand(-1, rows))
    named[adapter.up_bias].zero_()


def public_template(records: list[Record], task: TaskSpec, tokenizer: PreTrainedTokenizerBase,
                    device: torch.device) -> list[int]:
    """The most common token at each position among public records, up to their most common length."""
    if not records:
        return []
    batch = task.collate(records, tokenizer, device)
    ids, mask = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool()
    length = int(torch.mode(mask.sum(dim=1)).values)
    return [int(torch.mode(ids[mask[:, t], t]).values) for t in range(length) if bool(mask[:, t].any())]


# --- the last token: a label, seen only through the scalar each bin's bias gradient sums -------------
def last_labels(model: nn.Module, adapters: list[Bottleneck], broadcast: dict[str, torch.Tensor], bins: list[Bins],
                rows: list[list[int]], tolerance: float) -> list[list[int]]:
    """Each sequence's last token, chosen so the bins' bias gradients are explained.

    A bin's bias-gradient difference is ``sum s_i`` over its inputs, with ``s_i = c (p_i - e_y) . (J_i u)``:
    ``y`` the input's label (the next token), ``p_i`` the broadcast model's next-token distribution, ``J_i u`` how
    the logits move when the adapter's output moves along the trap's up column ``u``, and ``c`` the loss
    weight 1 / (batch x predicted tokens). With attention constant all of it is a function of the input's
    (token, position) and label, so every assembled input but the last one of each sequence predicts its share;
    in a bin holding the last input of one sequence, what is left is ``c (p . Ju - (Ju)_v)`` for its label ``v``,
    and the ``v`` that fits every such bin (all trapped adapters) to ``tolerance`` replaces the filled token."""
    length, count = len(rows[0]), len(rows)
    weight = 1.0 / (count * (length - 1))
    items = sorted({(row[t], t, row[t + 1]) for row in rows for t in range(length - 1)} -
                   {(row[-2], length - 2, row[-1]) for row in rows})
    lasts = sorted({row[-2] for row in rows})
    multiplicity = {token: sum(1 for row in rows if row[-2] == token) for token in lasts}
    device = model.get_input_embeddings().weight.device
    residuals: dict[int, list[tuple[torch.Tensor, float]]] = {token: [] for token in lasts}
    for k, adapter in enumerate(adapters):
        up = broadcast[adapter.up_weight][:, 0].double()
        known_tokens = torch.tensor([i[0] for i in items] + lasts, device=device)
        positions = torch.tensor([i[1] for i in items] + [length - 2] * len(lasts), device=device)
        probs, moves, inputs = _directional_logits(model, adapter, known_tokens, positions, up)
        labels = torch.tensor([i[2] for i in items], device=device)
        counts = torch.tensor([sum(1 for row in rows for t in range(length - 1) if (row[t], t, row[t + 1]) == i)
                               for i in items], device=device, dtype=torch.float64)
        expected = (probs[: len(items)] * moves[: len(items)]).sum(1) - moves[: len(items)].gather(1, labels[:, None])[:, 0]
        shares = weight * counts * expected
        slot = _bin_of(inputs @ bins[k].direction, bins[k])
        for n, token in enumerate(lasts):
            j = int(slot[len(items) + n])
            if j < 0 or any(int(slot[len(items) + m]) == j for m in range(len(lasts)) if m != n):
                continue  # outside every bin, or sharing one with another sequence's last input
            left = float(bins[k].d_bias[j]) - float(shares[slot[: len(items)] == j].sum())
            row = len(items) + n
            candidates = weight * multiplicity[token] * ((probs[row] * moves[row]).sum() - moves[row])
            residuals[token].append((candidates, left))
    chosen: dict[int, int] = {}
    for token, fits in residuals.items():
        if not fits:
            continue
        error = sum(((c - left) / max(abs(left), 1e-30)) ** 2 for c, left in fits) ** 0.5
        value, best = error.min(dim=0)
        if float(value) <= tolerance * len(fits) ** 0.5 and multiplicity[token] == 1:
            chosen[token] = int(best)
    return [row[:-1] + [chosen.get(row[-2], row[-1])] for row in rows]


def _bin_of(projected: torch.Tensor, bins: Bins) -> torch.Tensor:
    """Index of the kept bin each projection falls in, -1 for none."""
    inside = (projected[:, None] > bins.low[None, :]) & (projected[:, None] <= bins.high[None, :])
    return torch.where(inside.any(1), inside.float().argmax(1), torch.full_like(projected, -1, dtype=torch.long))


def _directional_logits(model: nn.Module, adapter: Bottleneck, tokens: torch.Tensor, positions: torch.Tensor,
                        up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For single-token sequences: next-token probabilities, d logits / d eps when the adapter's output moves
    by eps x ``up`` (a double backward: the gradient of w . d logits / d eps with respect to w), and the
    adapter's inputs."""
    eps = torch.zeros(tokens.shape[0], 1, 1, dtype=torch.float32, device=tokens.device, requires_grad=True)
    seen: list[torch.Tensor] = []
    direction = up.to(torch.float32)

    def shift(_module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        seen.append(args[0].detach())
        return output + eps * direction

    hook = adapter.module.register_forward_hook(shift)
    try:
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):  # flash attention has no double backward
            ids = tokens.reshape(-1, 1)
            logits = model(input_ids=ids, position_ids=positions.reshape(-1, 1), attention_mask=torch.ones_like(ids)).logits[:, -1]
            probe = torch.zeros_like(logits, requires_grad=True)
            (first,) = torch.autograd.grad((probe * logits).sum(), eps, create_graph=True)
            (moves,) = torch.autograd.grad(first.sum(), probe)
    finally:
        hook.remove()
    return torch.softmax(logits.detach().double(), dim=-1), moves.double(), seen[0].reshape(tokens.shape[0], -1).double()


# --- sequences from the recovered inputs ------------------------------------------------------------
class _Assembly:
    """Recovered tokens per position, laid out as the batch's sequences."""

    def __init__(self, found: list[Found], template: list[int], sequences: int, fill: bool):
        self.at: dict[int, list[int]] = {}
        for f in sorted(found, key=lambda f: (f.position, f.token)):
            tokens = self.at.setdefault(f.position, [])
            if f.token not in tokens:
                tokens.append(f.token)
        self.template, self.count, self.fill = template, max(sequences, 1), fill
        last = max(self.at, default=-1)
        self.length = max(len(template) if fill else 0, last + 1 + (1 if fill and last + 1 < len(template) else 0))

    def initial(self) -> list[list[int]]:
        """Position t of sequence b: the recovered tokens in turn, else the template's (when filling)."""
        rows: list[list[int]] = [[] for _ in range(self.count)]
        for t in range(self.length):
            tokens = self.at.get(t) or ([self.template[t]] if self.fill and t < len(self.template) else [])
            for b, row in enumerate(rows):
                if tokens:
                    row.append(tokens[b % len(tokens)])
        return rows

    def link(self, model: nn.Module, method: OpenHandle, task: TaskSpec, rows: list[list[int]], observed: torch.Tensor,
             config: TrapConfig) -> list[list[int]]:
        """Greedy, left to right: at each cut between two positions that both hold several recovered tokens,
        the permutation of the sequences' suffixes whose batch gradient has the highest cosine with the
        observed one. With attention constant a position's loss couples only its token and the next, so a
        suffix swap changes exactly one such pair: the move the gradient can judge. (A cut next to a
        position every sequence shares changes nothing: segments between shared tokens stay unlinked.)"""
        if len({len(r) for r in rows}) != 1:
            return rows
        params = [p for _, p in method.named_trainable]
        target = observed.float()
        best = _cosine(_batch_gradient(model, params, task, rows), target)
        cuts = [t for t in range(1, len(rows[0])) if len({r[t] for r in rows}) > 1 and len({r[t - 1] for r in rows}) > 1]
        for _ in range(config.link_passes):
            improved = False
            for t in cuts:
                for order in itertools.islice(itertools.permutations(range(len(rows))), 1, config.max_assignments + 1):
                    trial = [rows[b][:t] + rows[o][t:] for b, o in enumerate(order)]
                    value = _cosine(_batch_gradient(model, params, task, trial), target)
                    if value > best + 1e-9:
                        best, rows, improved = value, trial, True
            if not improved:
                break
        return rows


def _batch_gradient(model: nn.Module, params: list[nn.Parameter], task: TaskSpec, rows: list[list[int]]) -> torch.Tensor:
    device = params[0].device
    ids = torch.tensor(rows, device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),
             "position_ids": torch.arange(ids.shape[1], device=device).unsqueeze(0).expand_as(ids).contiguous()}
    with torch.enable_grad():
        loss = task.example_losses(model, batch).mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.unsqueeze(0), b.unsqueeze(0)))
