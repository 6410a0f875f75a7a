"""results/index.html in headless Chromium: the tables are rendered, sorted by the page's script, and
the figures decode. Inputs are synthetic result rows, so the test takes seconds.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it); without it the test is skipped
with that message.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from report_helpers import synthetic_grid

from bench.reporting import leaderboard
from bench.store.results import ResultStore, Row

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and Path(p).exists()), None)


def dump_dom(page: Path, profile: Path) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
               f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    from bench.reporting.report import write_reports

    root = tmp_path_factory.mktemp("report")
    ResultStore(root / "runs").append([Row(**r) for r in synthetic_grid()])
    write_reports(root / "runs", root / "results", [])
    return root / "results"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_index_renders_sorted_tables_and_figures(published, tmp_path):
    dom = dump_dom(published / "index.html", tmp_path / "profile")
    assert 'data-ready="1"' in dom, "the page's script did not run to its load handler"
    board_rows = len(leaderboard.read_csv(published / "leaderboard.csv"))
    leaderboard_html = re.search(r'<table id="leaderboard"[^>]*>.*?</table>', dom, re.S).group(0)
    assert leaderboard_html.count("<tr>") == board_rows + 1          # header + one row per run
    assert 'data-sorted-by="scenario"' in leaderboard_html           # sorted on load by the script
    scenarios = re.findall(r"<tr><td>(t4\[[^<]*)</td>", leaderboard_html)
    assert scenarios == sorted(scenarios) and scenarios
    table4_html = re.search(r'<table id="table4"[^>]*>.*?</table>', dom, re.S).group(0)
    assert "mitigates" in table4_html and "incompatible" in table4_html
    images = re.findall(r'<img src="figures/([^"]+)"', dom)
    assert "table4_heatmap.png" in images and "privacy_utility_frontier.png" in images
    loaded = int(re.search(r'data-images-loaded="(\d+)"', dom).group(1))
    assert loaded == len(images), "some figures did not decode"


def test_index_without_outputs_says_so(tmp_path):
    from bench.reporting.html import write_index

    page = write_index(tmp_path).read_text()
    assert 'id="leaderboard-missing"' in page and "(no figures)" in page
