"""Central (one model, no federation) reward-model diagnostic behind results/studies/rlhf-reward-model/README.md.

    PYTHONPATH=. python results/studies/rlhf-reward-model/central.py N_TRAIN STEPS LR [key=value ...]

Trains only the reward phase of table4.yaml's RLHF cell (model, task, LoRA) on N_TRAIN drawn preference
pairs for STEPS Adam steps at LR, and prints held-out accuracy on 400 other pairs (``ntest``), per
rejection kind. Keys: rlhf method params (reward_model, reward_pooling, target, rank, reward_beta), and
seed, bs (batch, 8), headonly=1 (train the head alone), lora_lr, ntest."""
import dataclasses, sys, time, torch
from bench.engine.runner import plan, prepare
from bench.spec.scenario import load
from bench.world import synthetic
n_train, steps, lr = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
over = {}
for a in sys.argv[4:]:
    k, v = a.split("=", 1)
    for t in (int, float):
        try: v = t(v); break
        except ValueError: pass
    over[k] = v
seed = int(over.pop("seed", 0)); bs = int(over.pop("bs", 8)); headonly = int(over.pop("headonly", 0)); lora_lr = float(over.pop("lora_lr", 0)); n_test = int(over.pop("ntest", 400))
sc = next(s for s in load("scenarios/table4.yaml") if s.method.name == "rlhf" and not s.defenses)
over = {"reward_model": "head", "reward_rounds": 0} | over  # the cell before the change unless told
sc = dataclasses.replace(sc, attacks=(), method=dataclasses.replace(sc.method, config=dataclasses.replace(sc.method.config, **over)))
p = prepare(sc, seed, plan(sc))
m = p.built.method; model = m.model
rng = torch.Generator().manual_seed(1000 + seed)
train = [synthetic.preference_triple(rng) for _ in range(n_train)]
test = [synthetic.preference_triple(rng) for _ in range(n_test)]
def kind(e):
    c, r = e["chosen"], e["rejected"]
    if c.split(" to ")[0] != r.split(" to ")[0]: return "patient"
    if c.split(" to ")[1].split(" on ")[0] != r.split(" to ")[1].split(" on ")[0]: return "clinic"
    plan_ = r.split("Plan: ")[1].rstrip(".")
    cond = next(k for k, v in synthetic.CONDITIONS.items() if c.split("Plan: ")[1].rstrip(".") in v[1])
    return "otherplan" if plan_ in synthetic.CONDITIONS[cond][1] else "mismatch"
m.on_round_start(0, 10)
head = [p_ for n, p_ in m.named_trainable if "reward_head" in n]; lora = [p_ for n, p_ in m.named_trainable if "reward_head" not in n]
opt = torch.optim.Adam([{"params": head}] + ([] if headonly else [{"params": lora, "lr": lora_lr or lr}]), lr=lr)
g = torch.Generator().manual_seed(seed)
def evaluate():
    model.eval(); out = {}
    with torch.no_grad():
        for s in range(0, len(test), 50):
            b = p.fed.collate(test[s:s+50]); mar = m.reward_margins(model, b)
            for e, v in zip(test[s:s+50], mar.tolist()): out.setdefault(kind(e), []).append(v > 0)
    model.train()
    allv = [x for v in out.values() for x in v]
    return sum(allv)/len(allv), {k: round(sum(v)/len(v), 2) for k, v in sorted(out.items())}
t = time.time(); curve = []
for step in range(steps):
    idx = torch.randint(len(train), (bs,), generator=g).tolist()
    b = p.fed.collate([train[i] for i in idx])
    loss = m.example_losses(model, b).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if (step + 1) % max(1, steps // 5) == 0:
        acc, _ = evaluate(); curve.append(round(acc, 3))
acc, by = evaluate()
tr_b = p.fed.collate(train[:64]); 
with torch.no_grad(): tr = float((m.reward_margins(model.eval(), tr_b) > 0).float().mean())
print(f"n={n_train} steps={steps} lr={lr} {over} seed={seed}: test {acc:.3f} {by} train64 {tr:.2f} curve {curve} {time.time()-t:.0f}s", flush=True)
