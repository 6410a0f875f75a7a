"""Exact discrete gradient matching by token swaps against a soft prompt's update (a probe, session 12).

A probe, not a registered attack (issue 15): the third attempt at a working honest-server attack on prompt
tuning after ``inversion-optim`` / ``inversion-decode`` and ``prefix_search.py``, measured failing; the
figures are in ../README.md ("Prompt tuning", session 12). Kept so the next attempt starts from what was
learned.

The server holds one client's one-step FedSGD update, ``-lr x`` the mean over the batch of each note's mean
next-token loss gradient with respect to the soft prompt. For a guess X (B token sequences) the objective is
the relative squared residual ``|g(X) - g*|^2 / |g*|^2`` with ``g(X)`` computed exactly (per-sequence
gradients through ``torch.func.vmap(grad)``); it is 1e-13 at the true batch, so the update identifies the
notes. The search is GCG's (Zou et al. 2023, "Universal and Transferable Adversarial Attacks on Aligned
Language Models") applied to gradient matching instead of a target string: the gradient of the objective
with respect to each position's one-hot token (through the input embedding and the next-token label at
once, a double backward) shortlists ``topk`` tokens per position; ``candidates`` random single-token
swaps, insertions and deletions from the shortlist are scored exactly and the best is kept when it lowers
the objective; after ``patience`` steps without one, every token at every position is scored exactly
(coordinate descent, ``--polish``). It starts from public records of the task (``view.auxiliary``, the
guess the floor makes), LAMP's language prior in its simplest form (Balunovic et al. 2022).

What it found (seed 0, Table 4's setting but a batch of one note): the basin is narrow. One wrong token in
the true note already leaves a residual of 0.23, as large as a wrong note's (0.21-0.63), so local moves get
no signal toward the record; from the true note with one token replaced the search moved away (residual
0.067, token accuracy 0.96 -> 0.67). Memory: the exhaustive pass grew the process to 23 GB (a vmap over
2,048 candidates in chunks of 32; not found why), so run it alone.

Run from the repository root (the scenario file is a Table 4 inversion cell with ``attacks:
[{name: inversion-swap-probe, params: {max_clients: 1}}]``; probe-prefix.yaml with that attack name is one):
    PYTHONPATH=. python results/studies/inversion-curves/prompt-tuning/swap_search.py SCENARIO.yaml [SEED] [STEPS] [--polish]
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attacks.inversion._common import TargetConfig, model_at, observed_gradient, targets
from bench.api.access import Access
from bench.api.attack import Attack
from bench.api.predictions import Reconstruction
from bench.api.transcript import ThreatView
from bench.api.vocabulary import AttackFamily, Vantage
from bench.client.vmapped import vmappable as _vmappable


class Capture(Attack):
    """Keeps the threat view it is given (the probe searches outside the run)."""

    vantage = Vantage.SERVER
    family = AttackFamily.INVERSION
    access = frozenset({Access.WEIGHTS, Access.GRADIENTS})
    needs = frozenset({"client_updates", "global_states"})
    Config = TargetConfig
    captured: dict[str, object] = {}

    def run(self, view: ThreatView, rng: torch.Generator) -> Reconstruction:
        Capture.captured["view"] = view
        return Reconstruction()


class SwapSearch:
    def __init__(self, model: torch.nn.Module, observed: torch.Tensor, starts: list[torch.Tensor],
                 rng: torch.Generator, topk: int = 32, candidates: int = 256, patience: int = 15):
        self.model, self.observed, self.starts, self.rng = model, observed, starts, rng
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.scale = float(observed.pow(2).sum())
        self.table = model.get_input_embeddings().weight.detach()
        self.vocab = self.table.shape[0]
        self.topk, self.candidates, self.patience = topk, candidates, patience

    def sequence_gradients(self, ids: torch.Tensor) -> torch.Tensor:
        """Each sequence's gradient of its mean next-token loss, flat, shape (sequences, trainable)."""
        def loss(params: dict[str, torch.Tensor], row: torch.Tensor) -> torch.Tensor:
            out = torch.func.functional_call(self.model, params, (), {"input_ids": row[None],
                                                                       "attention_mask": torch.ones_like(row)[None]})
            return F.cross_entropy(out.logits[0, :-1].float(), row[1:])

        chunks = []
        with _vmappable(self.model):
            for chunk in ids.split(32):
                grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(self.params, chunk)
                chunks.append(torch.cat([grads[n].reshape(chunk.shape[0], -1) for n in self.params], 1).detach())
        return torch.cat(chunks)

    def objective(self, total: torch.Tensor) -> torch.Tensor:
        return (total - self.observed).pow(2).sum(-1) / self.scale

    def one_hot_gradient(self, ids: torch.Tensor) -> torch.Tensor:
        """d objective / d one-hot token, (B, T, V): through the input embedding and the label at once."""
        one_hot = F.one_hot(ids, self.vocab).float().requires_grad_(True)
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
            logits = self.model(inputs_embeds=one_hot @ self.table, attention_mask=torch.ones_like(ids)).logits.float()
            nll = -(one_hot[:, 1:] * logits[:, :-1].log_softmax(-1)).sum(-1).mean(1)
            grads = torch.autograd.grad(nll.mean(), list(self.params.values()), create_graph=True)
            residual = (torch.cat([g.reshape(-1) for g in grads]) - self.observed).pow(2).sum() / self.scale
            (out,) = torch.autograd.grad(residual, one_hot)
        return out

    def proposals(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row each candidate changes, the candidate sequences): swaps, insertions, deletions."""
        batch, length = ids.shape
        scores = self.one_hot_gradient(ids)
        scores.scatter_(2, ids[..., None], float("inf"))
        shortlist = (-scores).topk(self.topk, dim=2).indices
        n = self.candidates
        rows, cols = torch.randint(batch, (n,), generator=self.rng), torch.randint(length, (n,), generator=self.rng)
        picks, kinds = torch.randint(self.topk, (n,), generator=self.rng), torch.randint(4, (n,), generator=self.rng)
        out = ids[rows].clone()
        for i in range(n):
            r, c, k = int(rows[i]), int(cols[i]), int(kinds[i])
            token = shortlist[r, c, int(picks[i])]
            if k == 2:  # insert at c, the last token falls off
                out[i, c + 1:] = ids[r, c:-1]
                out[i, c] = token
            elif k == 3:  # delete c, a shortlisted token closes the sequence
                out[i, c:-1] = ids[r, c + 1:]
                out[i, -1] = shortlist[r, -1, int(picks[i])]
            else:
                out[i, c] = token
        return rows, out

    def solve(self, steps: int, polish: bool, log=print) -> tuple[torch.Tensor, float]:
        ids = torch.stack(self.starts)
        per = self.sequence_gradients(ids)
        total = per.mean(0)
        best, stale = float(self.objective(total)), 0
        for step in range(steps):
            rows, candidates = self.proposals(ids)
            grads = self.sequence_gradients(candidates)
            totals = total[None] + (grads - per[rows]) / len(ids)
            scores = self.objective(totals)
            i = int(scores.argmin())
            if float(scores[i]) < best:
                best, stale = float(scores[i]), 0
                ids[rows[i]], per[rows[i]], total = candidates[i], grads[i], totals[i]
            else:
                stale += 1
            if step % 10 == 0:
                log(f"step {step}: residual {best:.4g}")
            if stale >= self.patience or best < 1e-8:
                break
        if polish:
            ids, best = self.coordinate_descent(ids, per, total, best, log)
        return ids, best

    def coordinate_descent(self, ids, per, total, best, log, passes: int = 3):
        """Every token at every position, scored exactly; a pass keeps each improvement as it goes."""
        for _ in range(passes):
            improved = False
            for row in range(ids.shape[0]):
                for col in range(ids.shape[1]):
                    candidates = ids[row].repeat(self.vocab, 1)
                    candidates[:, col] = torch.arange(self.vocab)
                    grads = self.sequence_gradients(candidates)
                    totals = total[None] + (grads - per[row]) / len(ids)
                    scores = self.objective(totals)
                    i = int(scores.argmin())
                    if float(scores[i]) < best - 1e-12:
                        best, improved = float(scores[i]), True
                        ids[row], per[row], total = candidates[i], grads[i], totals[i]
            log(f"coordinate pass: residual {best:.4g}")
            if not improved or best < 1e-8:
                break
        return ids, best


def main(scenario_file: str, seed: int = 0, steps: int = 300, polish: bool = False, restarts: int = 4) -> None:
    from bench.api.registry import ATTACKS, load_plugins
    from bench.engine import runner
    from bench.spec.scenario import load

    load_plugins()
    ATTACKS.register("inversion-swap-probe")(Capture)  # a probe: registered only while it runs
    scored = runner.score
    runner.score = lambda prediction, truth: (Capture.captured.setdefault("truth", truth), scored(prediction, truth))[1]
    runner.execute(load(scenario_file)[0], seed)
    view, truth = Capture.captured["view"], Capture.captured["truth"]
    target = next(targets(view, TargetConfig(max_clients=1), view.layout.num_trainable))
    records = truth.client_batches[target.key]  # printed beside the answer only; the search never reads them
    length = max(len(r) for r in records)
    public = [row[:length] for row in view.task.collate(view.auxiliary, view.tokenizer, "cpu")["input_ids"]
              if row.shape[0] >= length]
    rng = torch.Generator().manual_seed(seed)
    observed = observed_gradient(target.update, view.federation).float()
    started = time.time()
    with model_at(view.final_model, target.global_before) as model:
        answers = []
        for restart in range(restarts):
            starts = [public[int(i)] for i in torch.randperm(len(public), generator=rng)[:len(records)]]
            search = SwapSearch(model, observed, starts, rng)
            ids, best = search.solve(steps, polish)
            print(f"restart {restart}: residual {best:.4g}, {time.time() - started:.0f} s", flush=True)
            answers.append((best, ids))
        truth_ids = torch.tensor([r[:length] for r in records])
        print(f"residual at the true batch: {float(search.objective(search.sequence_gradients(truth_ids).mean(0))):.2e}")
    best, ids = min(answers, key=lambda a: a[0])
    for record in records:
        print("true:  ", repr(view.tokenizer.decode(record)))
    for row in ids:
        print("answer:", repr(view.tokenizer.decode(row)))


if __name__ == "__main__":
    numbers = [a for a in sys.argv[2:] if not a.startswith("--")]
    main(sys.argv[1], int(numbers[0]) if numbers else 0, int(numbers[1]) if len(numbers) > 1 else 300,
         "--polish" in sys.argv)
