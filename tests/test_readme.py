"""The README's commands work as written: the "bring your own model and data" block runs verbatim, and
the quick start's ``make bench`` / ``make test`` expand (``make -n``) to the commands the README
documents (``make bench`` itself runs the whole Table 4 grid, far too long for a test)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def block_after(heading: str) -> str:
    """The first ```bash block after ``heading`` in the README."""
    start = README.index(heading)
    match = re.compile(r"```bash\n(.*?)```", re.S).search(README, start)
    assert match, f"no bash block after {heading!r}"
    return match.group(1)


def commands(text: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments and blanks dropped."""
    joined = re.sub(r"\\\n\s*", "", text)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.slow  # about 40 s of CPU: five fresh interpreters, a zoo model copied, one federated run
def test_bring_your_own_model_and_data_runs_as_written(tmp_path):
    script = tmp_path / "byo.sh"
    script.write_text(block_after("### Bring your own model and data"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python"                      # the README says `python`: this project's interpreter
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')   # (a symlink would lose the venv)
    wrapper.chmod(0o755)
    work = tmp_path / "empty folder"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run(["bash", "-e", str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ok: 1 scenarios in my-scenario.yaml" in done.stdout
    assert "1 ok" in done.stdout                                        # the run itself
    report = work / "runs" / "report"
    assert (report / "figures" / "roc.png").exists() and (report / "index.html").exists()
    assert "No Table 4 cell can be built" in (report / "table4.md").read_text()
    table = done.stdout.split("1 ok", 1)[1]
    assert re.search(r"my-notes\s+1\s+ok\s+[0-9.]+\s+[0-9.]+", table), table


MAKE = shutil.which("make")


@pytest.mark.skipif(MAKE is None, reason="make is not installed")
def test_quick_start_make_targets_expand_to_the_documented_commands():
    def dry_run(target: str) -> list[str]:
        # A parent make (``make test PYTEST_ARGS=...``) passes its variables down: expand the defaults.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "PYTEST_ARGS")}
        done = subprocess.run([MAKE, "-n", "--no-print-directory", target], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        return [line.replace(".venv/bin/python", "python") for line in done.stdout.splitlines()]

    published = commands(block_after("## Published results"))
    assert published[0].startswith("make bench")
    bench = dry_run("bench")
    assert [c for c in bench if c.startswith("python -m bench")] == published[1:]
    assert published[-1].startswith("python -m bench report results/runs --out results")   # publishing is explicit
    documented = re.search(r"`make test` is `([^`]+)`", README).group(1).replace(".venv/bin/python", "python")
    assert documented in dry_run("test")
