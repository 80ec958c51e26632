# noetl-pg developer and CI entry points (GNU make). `make test` is what CI runs.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

VENV := .venv
PYTHON := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: venv run lint pgtap pytest test bench regression fuzz chaos failover partition clean

venv: $(VENV_STAMP)

# Re-installs when pyproject.toml changes. Debian/Ubuntu ship `venv` without ensurepip
# unless python3-venv is installed, so a failed first attempt installs it and retries.
$(VENV_STAMP): pyproject.toml
	if [ ! -x $(PYTHON) ]; then \
	    if ! python3 -m venv $(VENV); then \
	        rm -rf $(VENV); \
	        $(SUDO) apt-get update -qq; \
	        $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	        python3 -m venv $(VENV); \
	    fi; \
	fi
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[dev,all]'
	touch $@

run: venv
	$(VENV)/bin/noetl run examples/hello_world.yaml

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/sqlfluff lint sql/ tests/sql/

pgtap: venv
	PYTHON=$(PYTHON) bash scripts/run_pgtap.sh

# pytest exits 5 when it collects no tests; like any non-zero code that fails the target.
# The console tests drive Debian's chromium (scripts/install_chromium.sh installs it).
pytest: venv
	bash scripts/install_chromium.sh
	$(VENV)/bin/pytest -q

# Every check runs even when an earlier one fails, so one CI run reports all failures;
# the target fails if any of them did.
test: venv
	@failed=""; \
	for check in lint pgtap pytest; do \
	    echo "==> make $$check"; \
	    $(MAKE) --no-print-directory $$check || failed="$$failed $$check"; \
	done; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed" >&2; exit 1; fi; \
	echo "make test: all checks passed"

# Chaos suite (tests/py/test_chaos.py): mixed executions on a private PostgreSQL cluster
# while it restarts, backends are terminated and workers are SIGKILLed; every run exact.
# `make test` runs a short version (CHAOS_EXECUTIONS=25, one run).
CHAOS_EXECUTIONS ?= 1000
CHAOS_RUNS ?= 10
chaos: venv
	CHAOS_EXECUTIONS=$(CHAOS_EXECUTIONS) CHAOS_RUNS=$(CHAOS_RUNS) \
	    $(VENV)/bin/pytest -q -s tests/py/test_chaos.py

# PostgreSQL failover (tests/py/test_failover.py, also part of `make test`): a primary and
# a synchronous standby on local ports, the primary killed mid-loop, the standby promoted.
failover: venv
	$(VENV)/bin/pytest -q -s tests/py/test_failover.py

# A worker cut off by the network (tests/py/test_partition.py, also part of `make test`):
# PostgreSQL and two workers in network namespaces; skipped, with the reason, where
# `ip netns` is not permitted.
partition: venv
	$(VENV)/bin/pytest -q -s -rs tests/py/test_partition.py

bench: venv
	@shopt -s nullglob; benches=(bench/*.py); \
	if [ $${#benches[@]} -eq 0 ]; then echo "bench: no bench/*.py to run" >&2; exit 1; fi; \
	for bench in "$${benches[@]}"; do echo "==> $$bench"; $(PYTHON) "$$bench"; done

# The seeds' regression suite both ways (examples/regression/run.py): prints the sequential
# and the parallel master's times, their ratio and each one's children by status.
regression: venv
	$(PYTHON) examples/regression/run.py

# .pgdata/ is left alone: it may hold a running embedded server (stop it, then remove it).
clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache build *.egg-info
	find . -path ./.pgdata -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Longer fuzzing run (make test runs 500 cases per target): FUZZ_EXAMPLES cases per target.
FUZZ_EXAMPLES ?= 5000
fuzz: venv
	NOETL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest -q tests/py/test_fuzz.py
