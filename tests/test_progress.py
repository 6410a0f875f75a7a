"""Progress where the time goes: zoo pretraining on first use says so, and a run's bar names its stage
(evaluation, each attack) after the rounds; sweep bars show a scenario's name, not its cut-off tail."""

from __future__ import annotations

from pathlib import Path

from bench.api.display import short_name


def test_short_names_keep_the_file_and_the_values():
    name = "table4[method=instruction-tuning,defenses=robust-fltrust,attacks=mia-reference+inversion-dager]"
    assert short_name(name, 200) == name
    assert short_name(name, 71) == "table4[instruction-tuning,robust-fltrust,mia-reference+inversion-dager]"
    short = short_name(name, 40)
    assert len(short) == 40 and short.startswith("table4[instruction-tuning") and short.endswith("dager]")
    assert "…" in short and name[-60:] != short


def test_zoo_pretraining_on_first_use_says_so(tmp_path, monkeypatch, capfd):
    from bench.api.registry import MODELS

    monkeypatch.setenv("TIERBENCH_CACHE", str(tmp_path))
    zoo = MODELS.get("tiny-gpt2")
    model = zoo(zoo.Config(hidden=16, layers=1, heads=2, vocab=300, context=32, pretrain_steps=2, pretrain_batch=2,
                           corpus_documents=40))
    path = model.path()
    err = capfd.readouterr().err
    assert f"pretraining zoo model tiny-gpt2 on first use (2 steps; cached in {path}" in err
    assert Path(path, "done").exists()
    model.path()                                   # cached: silent
    assert "pretraining" not in capfd.readouterr().err


class Recorder:
    """A stand-in for the run's tqdm bar: records the stages it is told about."""

    def __init__(self):
        self.stages: list[str] = []
        self.steps = 0

    def update(self, n: int = 1) -> None:
        self.steps += n

    def reset(self, total: int | None = None) -> None:
        self.total, self.steps = total, 0

    def set_description_str(self, text: str) -> None:
        self.stages.append(text)


SCENARIO = """
name: tiny
tier: open-weight
model: tiny-gpt2
task: {name: synthetic-clinical, params: {num_classes: 2, max_length: 16}}
method: lora
federation: {clients: 2, clients_per_round: 2, rounds: 1, local_steps: 1, batch_size: 4, examples_per_client: 8,
             eval_examples: 8, mia_candidates: 8}
attacks: [mia-loss, inversion-dager]
seeds: [0]
"""


def test_a_run_names_its_stages_after_training(tmp_path):
    from bench.engine.runner import execute
    from bench.spec.scenario import load

    (tmp_path / "tiny.yaml").write_text(SCENARIO)
    (scenario,) = load(tmp_path / "tiny.yaml")
    bar = Recorder()
    rows = execute(scenario, 0, progress=bar)
    assert {r.status for r in rows} <= {"ok", "not-applicable"}, [r.error for r in rows]
    assert bar.stages == ["evaluating utility", "attack mia-loss", "attack inversion-dager"]
    assert bar.total == 3 and bar.steps == 2
