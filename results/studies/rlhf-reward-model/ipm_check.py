"""RLHF's Byzantine cell of table4-poisoning.yaml (no defense) with table4.yaml's new RLHF regime (likelihood reward,
8 reward rounds, 10 local steps, 520 records per client at member_fraction 0.5) put over it; prints the clean and
byz-ipm reward accuracy per seed. Env: FED / METHOD (JSON overrides), MODEL=table4 (the 4-layer model of the
privacy half instead of the file's 2-layer one); --prefflip adds the backdoor cell.

    MODEL=table4 FED='{"lr": 0.003, "eval_examples": 128}' PYTHONPATH=. python results/studies/rlhf-reward-model/ipm_check.py 0 1 2"""
import dataclasses, sys, time
from bench.engine.runner import execute
from bench.spec.scenario import load
over_method = dict(reward_model="likelihood", reward_rounds=8)
import os, json
over_fed = dict(local_steps=10, examples_per_client=520, member_fraction=0.5) | json.loads(os.environ.get("FED", "{}"))
over_method |= json.loads(os.environ.get("METHOD", "{}"))
cells = [s for s in load("scenarios/table4-poisoning.yaml") if s.method.name == "rlhf" and not s.defenses]
ipm = next(s for s in cells if "byz-ipm" in [a.name for a in s.attacks])
ipm = dataclasses.replace(ipm, method=dataclasses.replace(ipm.method, config=dataclasses.replace(ipm.method.config, **over_method)),
                          federation=dataclasses.replace(ipm.federation, **over_fed))
if os.environ.get("MODEL") == "table4":  # the privacy half's 4-layer model instead of the 2-layer one
    t4 = next(s for s in load("scenarios/table4.yaml") if s.method.name == "rlhf")
    ipm = dataclasses.replace(ipm, model=t4.model)
clean = dataclasses.replace(ipm, attacks=())
pf = next(s for s in cells if "poison-prefflip" in [a.name for a in s.attacks])
pf = dataclasses.replace(pf, method=ipm.method, federation=ipm.federation)
runs = [("clean", clean), ("byz-ipm", ipm)] + ([("prefflip", pf)] if "--prefflip" in sys.argv else [])
keep = ("utility.reward_accuracy", "utility.implicit_reward_margin", "utility.perplexity", "utility.base.reward_accuracy")
for seed in [int(a) for a in sys.argv[1:] if a.isdigit()]:
    for label, sc in runs:
        t = time.time()
        rows = execute(sc, seed)
        vals = {r.metric: round(r.value, 3) for r in rows if r.metric in keep and r.attack == "none" and r.value is not None}
        vals |= {r.metric: (round(r.value, 3), r.extra.get("floor")) for r in rows if r.metric.startswith("poison.") and r.value is not None}
        print(label, seed, f"{time.time() - t:.0f}s", vals, [(r.metric, r.status) for r in rows if r.status != "ok"][:2], flush=True)
