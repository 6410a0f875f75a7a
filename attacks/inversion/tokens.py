"""Bag-of-tokens recovery from the embedding gradients (full fine-tuning).

The embedding layer is a lookup, so dL/dE has a non-zero row exactly for each token that occurs as
an input (Melis et al. 2019, "Exploiting Unintended Feature Leakage in Collaborative Learning";
used as the first step of LAMP, Balunovic et al. 2022, and of FILM, Gupta et al. 2022). Rows of
tokens that were not in the batch are exactly zero in the update, rounding included, so the test is
exact for untied input embeddings (Llama-style, sequence classifiers): input tokens, in any order.

The output embedding (lm_head) gradient is dense: row v = sum_i w_i (p_iv - [y_i = v]) h_i. With a
near-uniform softmax (an untrained model) p_iv is spread thinly over the vocabulary while each label
adds a full -w_i h_i, so label rows stand out by norm: a row counts when its norm exceeds
``label_factor`` x the median row norm (the softmax floor). That test is used only where nothing
exact exists: tied embeddings (GPT-2: lm_head is wte), where every row is non-zero and input rows
carry the input gradient on top of the softmax floor, so it returns inputs and labels together, and
a trainable lm_head with frozen input embeddings. Measured limit: on a pretrained model the softmax
is peaked, the floor rows of likely tokens rival the label rows, and precision collapses (token F1
~0.2 on the zoo GPT-2); untied input embeddings stay exact (every input token, nothing else; the
final label-only token of each sequence is missed). The lm_head rows are not added to an exact
input bag: on a pretrained model they would add far more false tokens than the one missing label.

What it cannot see: how often a token occurred, its position, and anything when the embeddings
are frozen (LoRA, adapters, prompt tuning: the reconstruction is empty). The output is one sequence
per attacked batch: the recovered tokens in id order (score it with ``inversion.token_f1``; sequence
metrics are not its aim).

A message that is not a plain float update (secure aggregation, HE) has no sparse rows: the exact
zero test is skipped when most rows are non-zero, and the norm test on masked values finds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.inversion._common import Target, TargetConfig, configure_vantage, targets, trainable_names
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.predictions import Reconstruction, text_decoder
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, Vantage


@dataclass(frozen=True, kw_only=True)
class TokensConfig(TargetConfig):
    label_factor: float = doc("A dense-gradient row counts as a token when its norm exceeds this x the median row norm.", 10.0)
    sparse_fraction: float = doc("The exact non-zero-row test applies when at most this fraction of rows is non-zero.", 0.5)


@ATTACKS.register("inversion-tokens")
class EmbeddingRows(Attack):
    """Bag of tokens from the embedding-gradient rows (full fine-tuning)."""

    vantage = Vantage.SERVER
    family = AttackFamily.INVERSION
    access = frozenset({Access.WEIGHTS, Access.GRADIENTS})
    needs = frozenset({"client_updates", "global_states"})
    Config = TokensConfig

    def __init__(self, config: TokensConfig):
        super().__init__(config)
        configure_vantage(self, config)

    def run(self, view: ThreatView, rng: torch.Generator) -> Reconstruction:
        result = Reconstruction(decode=text_decoder(view.tokenizer))
        for target in targets(view, self.config, view.layout.num_trainable):
            tokens = [] if target.update is None else sorted(self.tokens(view, target))
            result.sequences[target.key] = [tokens] if tokens else []
        return result

    def tokens(self, view: ThreatView, target: Target) -> set[int]:
        method, model = view.final_model, view.final_model.model
        names = trainable_names(method)
        grads = method.unflatten(target.update.to(target.global_before.device))
        inputs = model.get_input_embeddings().weight
        output = getattr(model, "get_output_embeddings", lambda: None)()
        if id(inputs) in names:
            rows = grads[names[id(inputs)]]
            tied = output is not None and output.weight is inputs
            return self._dense_rows(rows) if tied else self._sparse_rows(rows)
        if output is not None and id(output.weight) in names:
            return self._dense_rows(grads[names[id(output.weight)]])
        return set()

    def _sparse_rows(self, rows: torch.Tensor) -> set[int]:
        nonzero = torch.nonzero(rows.abs().amax(dim=1) > 0).reshape(-1)
        if nonzero.numel() > self.config.sparse_fraction * rows.shape[0]:
            return self._dense_rows(rows)
        return set(nonzero.tolist())

    def _dense_rows(self, rows: torch.Tensor) -> set[int]:
        norms = rows.float().norm(dim=1)
        floor = norms.median()
        if not torch.isfinite(floor) or floor <= 0:
            return set(torch.nonzero(norms > 0).reshape(-1).tolist()) if floor == 0 else set()
        return set(torch.nonzero(norms > self.config.label_factor * floor).reshape(-1).tolist())
