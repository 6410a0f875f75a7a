# TierBench. `make bench` and `make test` set up .venv on first use (torch first, then the project).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
WHEELS := $(wildcard /opt/wheels)
PIP_EXTRA := $(if $(WHEELS),--find-links $(WHEELS),)
PYTEST_ARGS ?= -m "not perf and not slow"
OUT ?= results
PRESET ?= cpu-small
# auto: one single-threaded worker process per core for CPU runs of zoo models, else one process (bench/engine/executors.py)
EXECUTOR ?= auto
BENCH_SCENARIOS ?= scenarios/table4.yaml scenarios/table4-inversion.yaml scenarios/table4-inversion-malicious.yaml scenarios/table4-protocols.yaml scenarios/table4-poisoning.yaml scenarios/table4-poisoning-rlhf.yaml scenarios/table4-closed.yaml scenarios/table4-extraction.yaml scenarios/table4-protocols-extraction.yaml scenarios/table4-poisoning-power-krum.yaml scenarios/table4-poisoning-power-coordinate.yaml scenarios/table4-poisoning-rlhf-power-krum.yaml
# bench-full: also the columns the default grid leaves out (SecAgg/HE/robust rules against membership
# inference, norm clipping and FLTrust against poisoning, HE/robust rules at the closed tiers)
FULL_SCENARIOS ?= $(BENCH_SCENARIOS) scenarios/table4-more.yaml scenarios/table4-poisoning-more.yaml scenarios/table4-poisoning-rlhf-more.yaml scenarios/table4-closed-more.yaml

.PHONY: install bench bench-full test test-all perf lint clean-results

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check $(PIP_EXTRA) torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check $(PIP_EXTRA) -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

# Table 4's grid (resumes: finished (scenario, seed) runs are skipped), then every published file.
bench: install
	$(PY) -m bench run $(BENCH_SCENARIOS) --out $(OUT)/runs --preset $(PRESET) --executor $(EXECUTOR)
	$(PY) -m bench report $(OUT)/runs --out $(OUT) --scenarios $(BENCH_SCENARIOS)

bench-full: install
	$(PY) -m bench run $(FULL_SCENARIOS) --out $(OUT)/runs --preset $(PRESET) --executor $(EXECUTOR)
	$(PY) -m bench report $(OUT)/runs --out $(OUT) --scenarios $(FULL_SCENARIOS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -m "not perf"

perf: install
	$(PY) -m pytest -m perf --benchmark-only tests/benchmarks

lint: install
	$(PY) -m ruff check bench attacks defenses tests
