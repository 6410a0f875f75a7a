"""DAGER: exact gradient inversion of text batches from attention-projection gradients.

Petrov, Dimitrov, Baader, Mueller, Vechev 2024, "DAGER: Exact Gradient Inversion for Large Language
Models" (NeurIPS). The gradient of a linear layer is a sum of rank-one terms g_i x_i^T, so its span
contains exactly the layer inputs of the batch (when the width exceeds their number). Tokens are
recovered by checking every (token, position) layer-0 input against the span of the first attention
projection's gradient; decoder sequences are then grown left to right by checking each extension's
layer-1 input against the second layer's span (``_span``, ``_layers``, ``_decode``). All checks are
batched matrix products over the vocabulary or over all extensions of a step.

What it needs and where it stops:
- the first two layers' attention projections must be trainable: full fine-tuning (the weights) or
  LoRA on them (the factors; identifiable only while the batch has fewer distinct layer inputs than
  the rank r, see ``_layers``). Where they expose no informative span, the attack grows sequences
  through the first trainable linear map whose gradient does (bottleneck adapters; see "Adapters"
  below). Prompt tuning trains no linear map: the attack returns empty reconstructions there
  (``inversion-optim`` covers it).
- the span must not fill the input space: the number of distinct layer inputs (token positions that
  receive gradient, about B x (T - 1)) must stay below the hidden width d, with a margin. Past it
  the attack reports nothing rather than guesses.
- updates must be plain SGD steps (FedSGD forces SGD). Adam's normalised steps destroy the low rank.
- precision: what the client sends sets the noise. Under FedAvg the server sees float32 ``after -
  before``, whose rounding (half an ulp of the weights) swamps the weakest gradient directions when
  lr x gradient is small next to the weights: a small learning rate acts like quantisation. Under
  FedSGD it sees the gradient step itself, whose error is the float32 arithmetic behind it (far
  smaller). The rank is cut at the edge of the known noise (``noise_margin``, ``gradient_noise``),
  and inputs whose gradient sinks below it are lost.

Thresholds: a candidate passes when its normalised distance to the span is below ``span_threshold``
and below the distance at which ``false_positives`` unrelated candidates would pass by chance (the
Beta law of a random unit vector's distance to a rank-r subspace), measured in the space real
inputs occupy (LayerNorm keeps them in a hyperplane).

FedSGD is exact up to that noise, and so is FedAvg with one local SGD step (the update is one
gradient at the start state): it gets the one-step tolerances, not the several-step ones. Measured on
``scenarios/inversion.yaml`` (tiny-gpt2, B=2, one step, lr 1e-2): the FedAvg rank cut (1e-3 x the
largest singular value) kept rank 22 of 27 true layer-0 inputs and the midpoint state moved true
distances from ~1e-5 to ~1e-3, so the confidently predicted template suffix was lost.

FedAvg (several local steps): the update is a sum of gradients taken at drifting weights, so its
span only approximately contains the inputs. As DAGER does for FedAvg, inputs are computed at an interpolated state (start + ``fedavg_interpolation`` x update,
by default the midpoint of the trajectory), the rank threshold is looser and the distance threshold
wider (``fedavg_*`` fields); recovery degrades with learning rate x steps.

Departures from the paper: the final token of each causal-LM sequence (a label only, invisible to
span checks) is recovered from the output-side gradient (``_labels``); the guards of ``_decode``
(relative test, repeat test, span-explaining selection) replace the paper's top-B heuristics; LoRA is
handled by the projected check of ``_layers``; the aggregate target treats a round's aggregate as one
batch.

Final selection (``_decode.select_sequences`` then ``_decode.refine_by_energy``): the trie selection
(most new layer-1 inputs first, within the layer-1 rank) is refined by the layer-1 gradient the chosen
set leaves unexplained (singular directions weighted by their values, projected off the set's
inputs): add the sequence that explains most while fewer than the batch holds, and make the single
best swap, each only when it explains more than one noise-level direction (the rank cut squared).
Why, measured on ``scenarios/inversion.yaml`` (tiny-gpt2, B=2, one step): a confidently predicted
template suffix has gradient 1.2-5x the noise edge, so the rank is underestimated (26 of 29 inputs),
the trie cap dropped the second sequence, and wrong branches sat as close to the span as the true
one; the unexplained gradient of the true pair was 0.99 noise edges against 9125 for the first
sequence alone and 777-5315 for wrong variants. Probe ROUGE-1 (exact) before -> after, tiny-gpt2:
B=2 0.50 (0.5) -> 0.94 (0.5), B=4 0.44 (0.25) -> 0.67 (0), B=8 0.23 (0) -> 0.42 (0); tiny-llama
unchanged (0.93/0.81/0.80/0.70 at B=1/2/4/8, exact 0). Then ``noise_margin`` 2 -> 1 (keep every
singular direction above the noise edge: the weakest true inputs sit at 1.2-5x it) and
``relative_threshold`` 15 -> 40 (a true, confidently predicted extension reached ratio 27.5 and was
refused): tiny-gpt2 ROUGE-1 B=2/4/8 0.97 / 0.67 / 0.54 (exact 0.5 / 0.25 / 0), tiny-llama B=1/2/4/8
1.00 / 0.91 / 0.87 / 0.83 (exact 1.0 / 0.5 / 0.25 / 0); random-token exactness to B=16 unchanged
(1.0 at every batch, ``tests/benchmarks/test_bench_inversion.py``). The remaining loss is in growth, not
selection: the beam ranks prefixes by their worst extension ratio, and the true branch of a weak
suffix (ratios up to 3.9) loses to wrong branches (~1.8), so it is often not among the candidates.
Traced on tiny-gpt2 B=2: from position 10 nearly every candidate token passes the layer-1 check
after the true prefix (ratios 1.1-2.6, the true one 1.1), because in a shallow model with weak
attention a layer-1 input is dominated by its own token; a 2048-prefix beam does not help.

The gradient sent itself (FedSGD, ``bench.engine.federation.transmitted_update``). Its noise is not the
rounding of its values: the top noise singular value sat at 5-9x the Marchenko-Pastur edge of that
rounding on both zoo models at B = 1-8 (the float32 sums behind each element), while true inputs
sat at 175x-2e6x it (layer 0) and down to 4-9x it at layer 1 when B x (T - 1) nears the width. So the
edge is scaled by ``gradient_noise`` (8) and ``gradient_rank_tol`` (1e-9 of the largest, below any
edge) only guards a degenerate update (the weights' ``rank_tol`` of 1e-6 stays: at 1e-9 LoRA r16's
one-step spans filled with rounding noise and its B=1 recovery fell from 0.94 / 1.00 to 0). A weak true extension (the confidently predicted last body token)
is then perturbed by the noise next to its small singular value, up to ~150x its token's layer-0
distance, so the relative test is looser there (``gradient_relative_threshold``). Probe, real notes
of 16 tokens, one step, exact recovery at B = 1 / 2 / 4 / 8: margin x4 gave GPT-2 1 / 1 / 1 / 0 (the
near-full layer-1 span admits digit runs), x6-x10 gave GPT-2 1 / 1 / 1 / 1 and Llama 1 / 1 / 0.75 /
0.125; with the relative threshold 150: Llama 1 / 1 / 1 / 0.5 (500: Llama B=8 0). The same batches
sent as weights (FedAvg, one step) stay at GPT-2 1 / 0.5 / 0.25 / 0 and Llama 1 / 0.5 / 0.25 / 0.
At 8 tokens (16 x 7 inputs < 128) both models are exact at B = 8 and 16
(``tests/benchmarks/test_bench_inversion_text.py``).

Adapters (departure: the paper attacks attention projections only). A Houlsby adapter
``h + W_up relu(W_down h)`` trains no attention projection, and in round 0 ``W_up`` = 0, so
``W_down``'s gradient is exactly zero. ``W_up``'s is sum_t g_t a_t^T with a_t = relu(W_down h_t): its
row space holds every a_t while the batch's adapter inputs (about B x (T - 1)) are fewer than the
bottleneck size m, and the server knows W_down (open weights, broadcast adapters). The first block's
attention adapter sees at position t a function of tokens 0..t through the frozen block 0, so the
growth of stage 2 runs on it directly (``_through_trainable_map``, on the first map the update
trains): no layer-0 input depends on one token there, so every vocabulary token extends every prefix,
and the map is used only when its span is informative in its input space, over the input coordinates
the batch activated, with rank below the dimension its output gradients fill (127 for width 128 under
LayerNorm; else the span is only a subspace of the inputs'; the hidden width bounds m this way), and
not above ``FILL_FRACTION`` of either limit (the noise cut can drop a direction of a full span).
ReLU inputs are not isotropic, so the chance law does not bound false passes: a span one direction
short of full admitted random text at distance ~0 (size 16, 2 x 9 inputs). The acceptance ratio is
therefore calibrated on random inputs (``_chance_ratio``): an extension must sit ``CHANCE_MARGIN``
times closer to the span than any of them, and where the batch cannot, nothing is reported. Probe
(tiny GPT-2 of width 64, random tokens, FedSGD lr 0.1): exact at size 32 for B x (T - 1) = 7, 26 and
30 inputs, at size 64 for 52 and 60, empty at size 16 with 18 and at size 128 with 104 (> width 64).
The idea that adapter updates leak text to an honest server follows UTR (arXiv 2601.17533); this
span-and-growth attack is DAGER's, not UTR's method.

``growth_layer`` (departure, default 1 as in the paper) grows sequences at a deeper layer, whose
inputs mix more context. Probe ROUGE-1 (exact), B = 1 / 2 / 4 / 8, real text, one step: growth at
layer 2 gives tiny-gpt2 1.00 (1) / 1.00 (1) / 0.77 / 0.68 against 1.00 (1) / 0.97 (0.5) / 0.67 (0.25)
/ 0.54 at layer 1, but tiny-llama 1.00 (1) / 0.84 / 0.84 / 0.48 against 1.00 (1) / 0.91 (0.5) / 0.87
(0.25) / 0.83; layer 3 is between. Not a uniform gain, so the default stays the paper's.
``confirm_layer`` (departure, default off) requires each extension to pass a deeper layer's check as
well. Sent as weights, confirming at layer 3 moved Llama's exact recovery at B = 4 / 8 from 0.25 / 0
to 0.25 / 0.125 and left GPT-2 unchanged; at layer 2 it gained nothing. Off by default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

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
from attacks.inversion._decode import (
    NOISE_FLOOR,
    Candidates,
    Growth,
    grow_sequences,
    refine_by_energy,
    select_sequences,
    sequence_inputs,
    token_candidates,
)
from attacks.inversion._labels import complete
from attacks.inversion._layers import (
    capture_inputs,
    first_module,
    map_probe,
    output_gradient_dimension,
    probes_for,
    trainable_maps,
)
from attacks.inversion._span import SpanBasis, SpanCheck, merge_probes, restrict_to_inputs, rounding_noise, span_basis
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.predictions import Reconstruction
from bench.api.registry import ATTACKS
from bench.api.transcript import FederationSettings, ThreatView
from bench.api.vocabulary import AttackFamily, Vantage


@dataclass(frozen=True, kw_only=True)
class DagerConfig(TargetConfig):
    span_threshold: float = doc("FedSGD: a unit-norm input closer than this to the span is in the batch.", 0.1)
    rank_tol: float = doc("One step sent as weights: singular values above rank_tol x the largest count towards the "
                          "span's rank.", 1e-6)
    noise_margin: float = doc("Singular values must also exceed this x the edge of the update's float32 rounding noise.", 1.0)
    gradient_rank_tol: float = doc("FedSGD (the gradient sent): rank_tol, below any noise edge, so the edge decides.",
                                   1e-9)
    gradient_noise: float = doc("FedSGD sends the gradient itself: its float32 error as a multiple of the rounding of its "
                                "values (the float32 sums behind each element; measured 5-9x, see the docstring).", 8.0)
    gradient_relative_threshold: float = doc("FedSGD: relative_threshold when the gradient itself is sent (true "
                                             "distances are set by its computation noise, not the weights' rounding).",
                                             150.0)
    fedavg_span_threshold: float = doc("FedAvg (drifting weights): the distance threshold.", 0.1)
    fedavg_rank_tol: float = doc("FedAvg: the rank threshold (looser: drift adds small singular values).", 1e-3)
    fedavg_interpolation: float = doc("FedAvg: inputs are computed at start + this x update (0.5 = midpoint).", 0.5)
    false_positives: float = doc("Unrelated candidates allowed to pass by chance per check (per position at layer 0, per "
                                 "extension step at layer 1); tightens the threshold as the span nears full rank.", 0.01)
    relative_threshold: float = doc("An extension's layer-1 distance may be at most this x its token's layer-0 distance "
                                    "(rejects right tokens after wrong prefixes; see _decode).", 40.0)
    growth_layer: int = doc("Layer whose input span grows sequences (the paper: 1, the second layer; deeper layers mix "
                            "more context, which helps on templated text for some models; see the docstring).", 1)
    confirm_layer: int = doc("A deeper layer whose span check every extension must pass too (0 = none; see the "
                             "docstring).", 0)
    max_prefixes: int = doc("Most prefixes kept per position while growing sequences (strongest first).", 2048)
    beam_factor: int = doc("Prefixes kept per position: at most this x the most sequences the batch can hold.", 8)
    max_sequences: int = doc("Most sequences reported per batch (0 = batch size x local steps x clients, capped by the "
                             "example counts clients report).", 0)
    max_length: int = doc("Longest sequence searched (0 = the model's position limit).", 0)
    vocab_chunk: int = doc("Tokens checked per batched span computation (memory bound).", 512)
    recover_last_token: bool = doc("Causal LMs: recover each sequence's final (label-only) token.", True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.span_threshold <= 0 or self.fedavg_span_threshold <= 0:
            raise ValueError("span thresholds must be positive")
        if not 0.0 <= self.fedavg_interpolation <= 1.0:
            raise ValueError("fedavg_interpolation must be in [0, 1]")
        if self.growth_layer < 1:
            raise ValueError("growth_layer must be at least 1 (layer 0 finds the tokens)")
        if self.confirm_layer and self.confirm_layer <= self.growth_layer:
            raise ValueError("confirm_layer must be 0 (none) or deeper than growth_layer")


@dataclass(frozen=True)
class Tolerance:
    span: float
    rank: float
    interpolation: float
    relative: float
    sends_gradient: bool = False
    """FedSGD: the update is the gradient step itself, its noise the gradient's own float32 error."""


@ATTACKS.register("inversion-dager")
class Dager(Attack):
    """DAGER (Petrov et al. 2024): exact batch recovery by span checks on attention gradients."""

    vantage = Vantage.SERVER
    family = AttackFamily.INVERSION
    access = frozenset({Access.WEIGHTS, Access.GRADIENTS})
    needs = frozenset({"client_updates", "global_states"})
    Config = DagerConfig

    def __init__(self, config: DagerConfig):
        super().__init__(config)
        configure_vantage(self, config)

    def run(self, view: ThreatView, rng: torch.Generator) -> Reconstruction:
        return reconstruct(view, self.config, lambda target: self.invert(view, target, rng))

    def tolerance(self, federation: FederationSettings) -> Tolerance:
        c = self.config
        if federation.protocol == "fedsgd":
            return Tolerance(c.span_threshold, c.gradient_rank_tol, 0.0, c.gradient_relative_threshold, sends_gradient=True)
        # one local step is FedSGD sent as weights: the update is one gradient taken at the start
        # state, so its inputs are computed there and the span needs no drift allowance
        if int(federation.local_steps) <= 1:
            return Tolerance(c.span_threshold, c.rank_tol, 0.0, c.relative_threshold)
        return Tolerance(c.fedavg_span_threshold, c.fedavg_rank_tol, c.fedavg_interpolation, c.relative_threshold)

    def invert(self, view: ThreatView, target: Target, rng: torch.Generator) -> list[list[int]]:
        method, tol = view.final_model, self.tolerance(view.federation)
        update = target.update.to(target.global_before.device)
        state = target.global_before + tol.interpolation * update
        with model_at(method, state) as model:
            sequences = self._through_projections(view, model, target, state, tol, rng)
            if sequences is None:
                sequences = self._through_trainable_map(view, model, target, state, tol, rng) or []
            if not target.last_token_is_label:  # a reward model: the eos that ends each sequence was an input
                cut = (tuple(_through_eos(s, view.tokenizer.eos_token_id)) for s in sequences)
                return [list(s) for s in dict.fromkeys(cut)]  # two grown past the same end are one
            if sequences and is_language_model(model) and self.config.recover_last_token:
                observed = method.unflatten(observed_gradient(update, view.federation))
                sequences = complete(model, sequences, observed, trainable_names(method))
        return sequences

    def _through_projections(self, view: ThreatView, model: torch.nn.Module, target: Target, state: torch.Tensor,
                             tol: Tolerance, rng: torch.Generator) -> list[list[int]] | None:
        """The paper's attack: token candidates at layer 0, growth at ``growth_layer``; None when those
        attention projections expose no informative span (adapters, LoRA past its rank)."""
        depths = (0, self.config.growth_layer) + ((self.config.confirm_layer,) if self.config.confirm_layer else ())
        layers = [first_module(model, depth) for depth in depths]
        if None in layers:
            return None
        checks = [SpanCheck(self._bases(view, model, depth, target, state, tol), tol.span,
                            self.config.false_positives) for depth in depths]
        self._measure_input_space(model, layers, checks, rng)
        if not (checks[0].informative and checks[1].informative):
            return None
        return self._search(model, layers, checks, self._most_sequences(view, target), tol.relative)

    def _through_trainable_map(self, view: ThreatView, model: torch.nn.Module, target: Target, state: torch.Tensor,
                               tol: Tolerance, rng: torch.Generator) -> list[list[int]]:
        """Departure: growth through the first linear map the update trains, when its gradient identifies
        its inputs (else nothing is reported).

        Bottleneck adapters train no attention projection, but the up projection of the first block's
        attention adapter (``h + W_up relu(W_down h)``) has the gradient sum_t g_t a_t^T with
        a_t = relu(W_down h_t), and the server knows W_down: its span holds every a_t while the batch's
        distinct inputs stay below the bottleneck size (``W_down``'s own gradient is zero in round 0,
        where ``W_up`` = 0). The map is used when its span is informative in its input space and its
        rank stays below the dimension its output gradients can fill (``output_gradient_dimension``: at
        or above it the span is only a subspace of the inputs' span, as for LoRA's A factor). No layer-0 input depends on one token here, so every token of the
        vocabulary extends every prefix, and the relative test takes the span's own noise floor as
        each extension's reference instead of a layer-0 distance.
        """
        update = target.update.to(state.device)
        grads = view.final_model.unflatten(update)
        scale = self.config.gradient_noise * rounding_noise(update) if tol.sends_gradient else \
            rounding_noise(target.global_before + update)
        noise = view.final_model.unflatten(scale)
        for name, module in trainable_maps(model, grads):
            probe = map_probe(module, name, grads, noise)
            basis = span_basis(probe, tol.rank, self.config.noise_margin)
            if basis.rank == 0:
                continue  # not trained by this update (an adapter's down projection while its up is 0)
            # the first map the update trains decides: deeper maps carry weaker gradients, whose noise cut
            # can drop a full span below its limits (measured: the zoo GPT-2's fourth attention adapter,
            # rank 123 where its gradients fill 127 dimensions, grew fragments of 2-3 tokens)
            # an input coordinate whose gradient row is zero was zero in every input (a ReLU unit no
            # input of the batch activates): the inputs fill only the live coordinates, and a span
            # that fills those says nothing (every candidate silent on the same units would pass)
            basis.dim = min(basis.dim, int((probe.matrix.double().norm(dim=1) > basis.cut).sum()))
            if not (basis.informative and basis.rank < module.out_features):
                return []
            # the gradients at the output fill what they can: the span is a subspace of the inputs' span
            outputs = output_gradient_dimension(model, module, _random_tokens(model, rng), rng)
            check = SpanCheck([basis], tol.span, self.config.false_positives)
            self._measure_input_space(model, [module], [check], rng)
            if not (check.informative and basis.rank <= FILL_FRACTION * min(outputs, basis.dim)):
                return []
            relative = min(tol.relative, _chance_ratio(model, module, check, rng) / CHANCE_MARGIN)
            return self._grow_from_vocabulary(model, module, check, self._most_sequences(view, target), relative)
        return []

    def _grow_from_vocabulary(self, model: torch.nn.Module, module: torch.nn.Module, check: SpanCheck, most: int,
                              relative: float) -> list[list[int]]:
        vocab = model.get_input_embeddings().weight.shape[0]
        limit = min(self.config.max_length or _position_limit(model), check.rank + 1)
        reference = torch.full((vocab,), max(check.noise, NOISE_FLOOR))
        candidates = Candidates([torch.arange(vocab)], [reference], position_free=True)
        growth = Growth((check,), relative, limit, min(self.config.max_prefixes, self.config.beam_factor * most))
        grown = grow_sequences(model, [module], growth, candidates)
        kept = select_sequences(grown, check.rank, most)
        inputs = sequence_inputs(model, module, grown.sequences)
        return refine_by_energy(grown.sequences, kept, check, inputs, most)

    def _bases(self, view: ThreatView, model: torch.nn.Module, layer: int, target: Target, state: torch.Tensor,
               tol: Tolerance) -> list[SpanBasis]:
        method = view.final_model
        update = target.update.to(state.device)
        if tol.sends_gradient:
            noise = self.config.gradient_noise * rounding_noise(update)
        else:
            noise = rounding_noise(target.global_before + update)
        probes = probes_for(model, layer, method.unflatten(update), method.unflatten(state), method.unflatten(noise))
        return [span_basis(p, tol.rank, self.config.noise_margin) for p in merge_probes(probes)]

    def _measure_input_space(self, model: torch.nn.Module, layers: list[torch.nn.Module], checks: list[SpanCheck],
                             rng: torch.Generator) -> None:
        """Each span is judged within the space random inputs occupy (``restrict_to_inputs``)."""
        vocab, width = model.get_input_embeddings().weight.shape
        length = min(16, _position_limit(model))
        sample = torch.randint(vocab, (-(-4 * width // length), length), generator=rng)
        for layer, check in zip(layers, checks):
            inputs = capture_inputs(model, layer, sample)
            for basis in check.bases:
                restrict_to_inputs(basis, inputs)

    def _most_sequences(self, view: ThreatView, target: Target) -> int:
        return self.config.max_sequences or target.most_sequences(view.federation)

    def _search(self, model: torch.nn.Module, layers: list[torch.nn.Module], checks: list[SpanCheck],
                most: int, relative: float) -> list[list[int]]:
        vocab = model.get_input_embeddings().weight.shape[0]
        # every position of every sequence is a distinct layer-1 input: no sequence outgrows the rank
        limit = min(self.config.max_length or _position_limit(model), checks[1].rank + 1)
        candidates = token_candidates(model, layers[0], checks[0], vocab, limit, self.config.vocab_chunk)
        if not candidates.tokens or candidates.at(0)[0].numel() == 0:
            return []
        # a deeper confirming layer only helps where its span says something
        judged = [i for i in range(1, len(checks)) if i == 1 or checks[i].informative]
        ratios = tuple(max(_noise_ratio(checks[i], checks[0]), 1.0) for i in judged)
        beam = min(self.config.max_prefixes, self.config.beam_factor * most)
        growth = Growth(tuple(checks[i] for i in judged), relative, limit, beam, ratios)
        grown = grow_sequences(model, [layers[i] for i in judged], growth, candidates)
        kept = select_sequences(grown, checks[1].rank, most)
        inputs = sequence_inputs(model, layers[1], grown.sequences)
        return refine_by_energy(grown.sequences, kept, checks[1], inputs, most)


def _through_eos(sequence: list[int], eos: int | None) -> list[int]:
    """A sequence cut after its first eos: the tasks end each sequence with it and pad after, and padding
    sends no gradient, so what the search grew past it is the span's false positives."""
    return sequence[: sequence.index(eos) + 1] if eos is not None and eos in sequence else sequence


FILL_FRACTION = 0.95
"""A trainable map's span counts as full above this fraction of the dimension its inputs or its output
gradients fill: the noise cut drops the weakest directions of a full span (measured on the zoo GPT-2,
adapter size 128 at batch 8, 184 inputs: rank 126 where the output gradients fill 127, and the growth
returned a fragment). Identifiable batches sat at most at 115 of 127 (size 128, batch 5)."""
CHANCE_SAMPLE = 256
"""Random sequences of 16 tokens whose inputs calibrate a trainable map's check (``_chance_ratio``)."""
CHANCE_MARGIN = 10.0
"""An extension must sit this many times closer to the span than the closest random input."""


def _chance_ratio(model: torch.nn.Module, module: torch.nn.Module, check: SpanCheck, rng: torch.Generator) -> float:
    """The smallest distance-to-noise ratio of a random input that passes ``check``'s absolute test.

    The chance law of ``_span.chance_distance`` is that of isotropic inputs. A ReLU bottleneck's inputs
    are not: a unit that fires for one input of the batch alone, or two units that fire only together,
    leave the span's complement on units that nearly every candidate leaves silent. Measured (adapter
    size 16, 2 x 9 inputs, rank 15 of 16): random inputs sat at ratios from 0.003, below the batch's own
    (up to 0.02), and the uncalibrated growth returned random text. So the growth accepts only what sits
    ``CHANCE_MARGIN`` times closer than any random input; where that excludes the batch too, it reports
    nothing. Position 0 is left out: a random first token may be the batch's own (the same input).
    """
    inputs = capture_inputs(model, module, _random_tokens(model, rng))[:, 1:]
    inputs = inputs.reshape(-1, inputs.shape[-1])
    score, distance = check.measure(inputs, inputs.shape[0])
    ratio = distance.cpu() / max(check.noise, NOISE_FLOOR)
    admitted = ratio[score.cpu() < 1.0]
    return float(admitted.min()) if admitted.numel() else float("inf")


def _random_tokens(model: torch.nn.Module, rng: torch.Generator) -> torch.Tensor:
    """``CHANCE_SAMPLE`` random sequences of 16 tokens (fewer where the model's positions end)."""
    vocab = model.get_input_embeddings().weight.shape[0]
    return torch.randint(vocab, (CHANCE_SAMPLE, min(16, _position_limit(model))), generator=rng)


def _noise_ratio(check: SpanCheck, tokens: SpanCheck) -> float:
    """How much noisier this layer's true distances are than layer 0's."""
    return max(check.noise, 1e-12) / max(tokens.noise, 1e-12) if tokens.noise > 0 else 1.0


def _position_limit(model: torch.nn.Module) -> int:
    config = model.config
    return int(getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 512)
