"""What a user finds on their own: ``ls -v`` documents every key, components describe themselves,
plugins load from the user's folder, provenance marks uncommitted work, and ``tierbench`` outside the
checkout says where to run from."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cli
from bench.api.registry import ATTACKS, DEFENSES, METHODS, MODELS, TASKS, TIERS
from bench.store.provenance import git_state

ROOT = Path(__file__).resolve().parents[1]
REGISTRIES = (TIERS, MODELS, TASKS, METHODS, ATTACKS, DEFENSES)


def tierbench(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=300)


def test_every_component_has_a_description():
    blank = [f"{r.kind} {name}" for r in REGISTRIES for name in r.names() if not cli.summary_of(r.get(name))]
    assert blank == []


def test_ls_verbose_shows_every_key_with_type_and_default(capsys):
    from bench.spec.scenario import Federation

    assert cli.main(["ls", "-v"]) == 0
    out = capsys.readouterr().out
    assert "federation (scenario key `federation:`):" in out and "scenario file (top-level keys):" in out
    assert "      seeds: int or list of int = 1  A count N" in out
    for f in dataclasses.fields(Federation):
        assert f"      {f.name}: " in out, f.name
    assert "      rounds: int = 2  Federated rounds (1..100000)." in out
    assert "      optimizer: one of 'sgd', 'adam', 'adamw' = 'adam'  Client optimizer." in out
    assert "      path: str (required)  Hub name" in out
    for registry in REGISTRIES:
        for name in registry.names():
            for line in cli.config_lines(registry.get(name).Config):
                assert f"      {line}" in out
    assert "dp-local                 Record-level DP-SGD" in out


@pytest.mark.parametrize("hint, text", [(int, "int"), (float | None, "float or null"), (tuple[str, ...], "list of str"),
                                        (dict, "mapping")])
def test_type_names(hint, text):
    assert cli.type_name(hint) == text


PLUGIN = '''
from dataclasses import dataclass

from bench.api.attack import Attack
from bench.api.config import doc
from bench.api.predictions import MembershipScores
from bench.api.registry import ATTACKS
from helper_module import K


@ATTACKS.register("mia-from-my-folder")
class MyAttack(Attack):
    """A user's attack, loaded with --plugins."""
    vantage = "external"
    family = "mia"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        k: int = doc("What k means.", K)

    def run(self, view, rng):
        return MembershipScores(scores=-view.final_model.example_losses(view.candidates))
'''


TASK_PLUGIN = '''
from bench.world.tasks import SyntheticClinical
from bench.api.registry import TASKS


@TASKS.register("my-task")
class MyTask(SyntheticClinical):
    """A user's task, loaded from TIERBENCH_PLUGINS."""
'''


def test_plugins_load_from_a_users_folder(tmp_path):
    folder, other = tmp_path / "my plugins", tmp_path / "more"
    folder.mkdir()
    other.mkdir()
    (folder / "my_attack.py").write_text(PLUGIN)
    (folder / "helper_module.py").write_text("K = 7\n")   # plugin modules can import each other
    (folder / "_private.py").write_text("raise RuntimeError('never imported')\n")
    (other / "my_task.py").write_text(TASK_PLUGIN)
    done = tierbench("ls", "-v", "--plugins", str(folder), cwd=tmp_path, env={"TIERBENCH_PLUGINS": str(other)})
    assert done.returncode == 0, done.stderr
    assert "mia-from-my-folder       A user's attack, loaded with --plugins." in done.stdout
    assert "k: int = 7  What k means." in done.stdout
    assert "my-task                  A user's task, loaded from TIERBENCH_PLUGINS." in done.stdout


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("raise RuntimeError('broken on purpose')", "broken.py: RuntimeError: broken on purpose"),
    ("from bench.api.registry import ATTACKS\n@ATTACKS.register('mia-loss')\nclass Again:\n    pass\n",
     "attack 'mia-loss' is already registered"),
])
def test_a_bad_plugin_is_a_clean_error(tmp_path, content, message, capsys):
    folder = tmp_path / "plugins"
    if content is not None:
        folder.mkdir()
        (folder / f"broken_{abs(hash(content))}.py").write_text(content)
        message = message.replace("broken.py", f"broken_{abs(hash(content))}.py")
    assert cli.main(["ls", "--plugins", str(folder)]) == 2
    err = capsys.readouterr().err
    assert message in err and "--plugins" in err and "Traceback" not in err


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


def test_provenance_marks_uncommitted_and_untracked_project_files(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "a.py").write_text("x = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "one")
    clean = git_state(tmp_path)
    assert clean and not clean.endswith("-dirty") and clean != "unknown"
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "out.csv").write_text("a\n")           # outputs are not project files
    assert git_state(tmp_path) == clean
    (tmp_path / "attacks").mkdir()
    (tmp_path / "attacks" / "new.py").write_text("y = 2\n")        # an untracked module changes what runs
    assert git_state(tmp_path) == clean + "-dirty"
    (tmp_path / "attacks" / "new.py").unlink()
    (tmp_path / "bench" / "a.py").write_text("x = 2\n")             # a modified tracked one too
    assert git_state(tmp_path) == clean + "-dirty"
    assert git_state(tmp_path / "results") == clean + "-dirty"      # from anywhere inside the checkout
    outside = tmp_path.parent / f"{tmp_path.name}-nogit"
    outside.mkdir()
    assert git_state(outside) == "unknown"                          # not a checkout (tmp is outside any)


def test_outside_the_checkout_defaults_to_its_scenarios_or_says_where_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.scenario_root() == ROOT / "scenarios"                # a checkout / editable install: its own
    assert cli.main(["run", "scenarios/smoke.yaml", "--quiet"]) == 2
    assert f"TierBench's own is {ROOT / 'scenarios' / 'smoke.yaml'}" in capsys.readouterr().err
    monkeypatch.setattr(cli, "PROJECT_ROOT", tmp_path / "site-packages")   # a wheel: no scenario files shipped
    assert cli.scenario_root() is None
    assert cli.main(["validate"]) == 2
    err = capsys.readouterr().err
    assert "no scenarios/ folder in" in err and "run from a TierBench checkout" in err


def test_validate_and_ls_outside_the_checkout_find_its_scenarios(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate", str(ROOT / "scenarios" / "smoke.yaml")]) == 0
    assert cli.main(["ls"]) == 0
    assert f"scenario files ({ROOT / 'scenarios'}):" in capsys.readouterr().out
