"""Linear probes behind results/studies/rlhf-reward-model/README.md: how much of the preference rule a linear
reward on the frozen base model's features (mean over real tokens of each layer, and the last token) can read,
against the number of training pairs; and the base model's own likelihood preference.

    PYTHONPATH=. python results/studies/rlhf-reward-model/probe.py

Bradley-Terry = logistic regression on chosen-minus-rejected features (standardised, L2 weight wd), LBFGS."""
import dataclasses, torch, sys
from bench.engine.runner import plan, prepare
from bench.spec.scenario import load
from bench.world import synthetic
from bench.methods._common import sequence_logprobs
sc = next(s for s in load("scenarios/table4.yaml") if s.method.name == "rlhf" and not s.defenses)
sc = dataclasses.replace(sc, attacks=())
p = prepare(sc, 0, plan(sc)); m = p.built.method; model = m.model.eval()
rng = torch.Generator().manual_seed(1000)
train = [synthetic.preference_triple(rng) for _ in range(1024)]
test = [synthetic.preference_triple(rng) for _ in range(400)]
def kind(e):
    c, r = e["chosen"], e["rejected"]
    if c.split(" to ")[0] != r.split(" to ")[0]: return "patient"
    if c.split(" to ")[1].split(" on ")[0] != r.split(" to ")[1].split(" on ")[0]: return "clinic"
    plan_ = r.split("Plan: ")[1].rstrip(".")
    cond = next(k for k, v in synthetic.CONDITIONS.items() if c.split("Plan: ")[1].rstrip(".") in v[1])
    return "otherplan" if plan_ in synthetic.CONDITIONS[cond][1] else "mismatch"
def feats(data):
    F, L = [], []
    with torch.no_grad(), model.inner.disable_adapter():
        for s in range(0, len(data), 64):
            b = p.fed.collate(data[s:s+64]); fs, ls = [], []
            for side in ("", "rejected_"):
                ids, mask, lab = b[side+"input_ids"], b[side+"attention_mask"], b[side+"labels"]
                hs = model.inner(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
                w = mask.unsqueeze(-1).float(); last = mask.sum(1) - 1; ar = torch.arange(len(ids))
                f = torch.cat([ (h*w).sum(1)/w.sum(1) for h in hs[1:]] + [hs[-1][ar, last]], 1)
                fs.append(f); ls.append(sequence_logprobs(model.inner, ids, mask, lab))
            F.append(fs[0] - fs[1]); L.append(ls[0] - ls[1])
    return torch.cat(F), torch.cat(L)
Ftr, Ltr = feats(train); Fte, Lte = feats(test)
kinds = [kind(e) for e in test]
def bykind(ok):
    d = {}
    for k, o in zip(kinds, ok.tolist()): d.setdefault(k, []).append(o)
    return {k: round(sum(v)/len(v), 2) for k, v in sorted(d.items())}
ok = Lte > 0
print("base likelihood preference", round(ok.float().mean().item(), 3), bykind(ok))

D = 128
sets = {"all": slice(None), "lastlayer-mean": slice(3*D, 4*D), "last-token": slice(4*D, 5*D), "layer1-mean": slice(0, D), "layer2-mean": slice(D, 2*D), "layer3-mean": slice(2*D,3*D)}
for n in (64, 256, 1024):
  for name, sl in sets.items():
    if n != 1024 and name not in ("all", "lastlayer-mean", "last-token"): continue
    X = Ftr[:n, sl]; mu = X.std(0) + 1e-6
    for wd in (1e-3, 1e-2):
        w = torch.zeros(X.shape[1], requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=300)
        def closure():
            opt.zero_grad(); l = -torch.nn.functional.logsigmoid((X/mu) @ w).mean() + wd * (w**2).sum(); l.backward(); return l
        opt.step(closure)
        ok = (Fte[:, sl]/mu) @ w > 0
        print(n, name, wd, "train", round(((X/mu) @ w > 0).float().mean().item(), 3), "test", round(ok.float().mean().item(), 3), bykind(ok), flush=True)
