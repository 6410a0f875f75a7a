"""The layering contract (issue 17): imports go down the layers of ARCHITECTURE.md, plugins import the api.

``[tool.importlinter]`` in pyproject.toml states the contracts; these tests run ``import-linter`` on the
tree, and on a copy with one inversion planted, so that the check is known to fail when it should.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


def lint(root: Path) -> subprocess.CompletedProcess:
    """import-linter over ``root`` (its pyproject.toml, its packages first on the path)."""
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def planted(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the packages and pyproject.toml with ``line`` appended to ``module`` (a path)."""
    for package in ("bench", "attacks", "defenses"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}\n")
    return tmp_path


def test_the_tree_keeps_every_layer_contract():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    # the engine importing a plugin (the old federation -> defenses.base)
    ("bench/engine/federation.py", "import defenses.robust.rules", "bench never imports a plugin"),
    # the api importing the engine
    ("bench/api/errors.py", "import bench.engine.runner", "bench: imports go down the layers"),
    # an attack importing a defense's internals (the old minmax -> robust.rules)
    ("attacks/poisoning/minmax.py", "import defenses.robust.rules", "attacks and defenses do not import each other"),
    # a plugin importing the engine
    ("attacks/mia/loss.py", "import bench.engine.federation", "attacks and defenses import only the api layer"),
    # reporting re-running training (the old figures/table1 -> runner)
    ("bench/reporting/table1.py", "import bench.engine.runner", "reporting reads the store"),
])
def test_a_planted_inversion_breaks_its_contract(tmp_path, module, line, broken):
    result = lint(planted(tmp_path, module, line))
    assert result.returncode != 0
    report = result.stdout.split("Broken contracts", 1)[-1]
    assert broken in report, result.stdout
    assert module.removesuffix(".py").replace("/", ".") in report


def test_every_bench_module_lives_in_a_layer():
    """A module directly under bench/ would sit outside every contract: only the entry points may."""
    stray = sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name not in {"__init__.py", "__main__.py", "cli.py"})
    assert not stray, f"move these into a layer package (see ARCHITECTURE.md): {stray}"
    layered = {p.name for p in (ROOT / "bench").iterdir() if (p / "__init__.py").exists()}
    contract = (ROOT / "pyproject.toml").read_text().split('id = "bench-layers"', 1)[1].split("[[", 1)[0]
    missing = sorted(name for name in layered if f"bench.{name}" not in contract)
    assert not missing, f"packages outside the bench-layers contract: {missing}"
