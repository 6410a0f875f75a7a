"""``extract-generate``: generate many samples, rank them by memorisation signals, check the top N.

Carlini et al. 2021, "Extracting Training Data from Large Language Models" (USENIX Security): sample
many texts from the model, rank them by (i) perplexity, (ii) log-perplexity / zlib entropy, (iii)
log-perplexity under the model - under a reference model (here the base model, the natural reference
in post-training), (iv) log-perplexity of the text / of its lower-cased copy; inspect the top N.

Here a sample *reproduces* a candidate record when they share a run of at least ``ngram`` consecutive
words (the threshold; Carlini et al. checked samples by hand and against the training set by search).
Per candidate: hit = some top-N sample (ranked by ``rank_by``) reproduces it; ``graded`` holds the
same indicator under each of the four rankings (``top_perplexity``, ``top_zlib``, ``top_reference``,
``top_lowercase``). The base model run through the same pipeline (its samples ranked by its own
signals, the reference ranking then degenerate) is the floor; non-members are the control (samples
that follow the task's templates share words with any record of the distribution).

Departures: the tier handles decode greedily only, so sampling diversity comes from prompts: the first
``prompt_words`` words of distinct public auxiliary records (the paper's "internet text" prompts)
instead of top-k sampling from an empty prompt. Ranking needs token log-probabilities: LOGITS access.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from attacks.extraction._common import public_prompts, summed_nll
from attacks.mia._common import text_of
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.errors import IncompatibleError
from bench.api.handles import ModelHandle
from bench.api.predictions import Extraction
from bench.api.registry import ATTACKS
from bench.api.transcript import ThreatView

RANKINGS = ("perplexity", "zlib", "reference", "lowercase")


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@ATTACKS.register("extract-generate")
class GenerateAndRank(Attack):
    """Samples from public prompts, ranked by the four Carlini et al. signals; top N checked against the candidates."""

    vantage = "external"
    family = "extraction"
    access = frozenset({Access.TEXT, Access.LOGITS})
    task_kinds = frozenset({"language"})

    @dataclass(frozen=True, kw_only=True)
    class Config:
        samples: int = doc("distinct public prompts, one greedy sample each", 64)
        prompt_words: int = doc("words of a public record used as a prompt", 2)
        max_new_tokens: int = doc("tokens generated per sample", 32)
        top: int = doc("samples inspected per ranking (the paper's top N)", 16)
        ngram: int = doc("shared consecutive words that make a sample reproduce a record", 6)
        rank_by: str = doc(f"ranking for the headline rate: {', '.join(RANKINGS)}", "zlib")

        def __post_init__(self) -> None:
            if self.rank_by not in RANKINGS:
                raise ValueError(f"rank_by must be one of {', '.join(RANKINGS)}")
            if min(self.samples, self.prompt_words, self.max_new_tokens, self.top, self.ngram) < 1:
                raise ValueError("samples, prompt_words, max_new_tokens, top and ngram must be at least 1")

    def run(self, view: ThreatView, rng: torch.Generator) -> Extraction:
        prompts = public_prompts(view, self.config.prompt_words, self.config.samples)
        if not prompts:
            raise IncompatibleError("extract-generate needs public auxiliary records to draw prompts from")
        records = [set().union(*[word_ngrams(text_of(view, e), n) for n in (self.config.ngram,)])
                   for e in view.candidates]
        final = self._reproduced(view.final_model, view.base_model, prompts, records)
        base = self._reproduced(view.base_model, view.base_model, prompts, records)
        trials = torch.ones(len(view.candidates), dtype=torch.float64)
        return Extraction(hits=final[self.config.rank_by], trials=trials, base_hits=base[self.config.rank_by],
                          graded={f"top_{r}": final[r] for r in RANKINGS},
                          base_graded={f"top_{r}": base[r] for r in RANKINGS},
                          extra={"samples": float(len(prompts))})

    def _reproduced(self, model: ModelHandle, reference: ModelHandle, prompts: list[str],
                    records: list[set[tuple[str, ...]]]) -> dict[str, torch.Tensor]:
        """Per ranking: 1.0 for each candidate reproduced by one of its top-N samples."""
        samples = [p + g for p, g in zip(prompts, model.generate(prompts, self.config.max_new_tokens), strict=True)]
        scores = self._rank_scores(model, reference, samples)
        out = {}
        for name, score in scores.items():
            top = torch.argsort(score, descending=True, stable=True)[: self.config.top].tolist()
            grams = set().union(*[word_ngrams(samples[i], self.config.ngram) for i in top])
            out[name] = torch.tensor([float(bool(r & grams)) for r in records], dtype=torch.float64)
        return out

    @staticmethod
    def _rank_scores(model: ModelHandle, reference: ModelHandle, samples: list[str]) -> dict[str, torch.Tensor]:
        """Higher = more likely memorised, per ranking (Carlini et al. 2021, section 5.1)."""
        texts = [{"text": s} for s in samples]
        nll = summed_nll(model, texts)
        lengths = torch.tensor([max(len(s), 1) for s in samples], dtype=torch.float64)
        zlib_bytes = torch.tensor([len(zlib.compress(s.encode("utf-8"))) for s in samples], dtype=torch.float64)
        lower = summed_nll(model, [{"text": s.lower()} for s in samples])
        ref = summed_nll(reference, texts)
        log_ppl = nll / lengths  # per character: samples differ in token count
        return {"perplexity": -log_ppl, "zlib": -nll / zlib_bytes, "reference": ref - nll, "lowercase": lower / nll.clamp_min(1e-9)}
