"""Backdoor strength through the whole harness (issue 6's bar: ASR >= 0.9 at 10% malicious clients)."""

from pathlib import Path

from bench.engine.runner import execute
from bench.spec.scenario import load


def test_boosted_backdoor_reaches_asr_090_with_one_malicious_client_in_ten():
    scenario = next(s for s in load(Path(__file__).resolve().parents[1] / "scenarios" / "poisoning.yaml")
                    if "fraction=0.1" in s.name and s.defense_label == "none")
    rows = execute(scenario, 0)
    asr = next(r.value for r in rows if r.metric == "poison.asr")
    assert asr >= 0.9
