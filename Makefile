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

# Every benchmark in bench/ (BENCHES), each writing bench/results/<name>.json, then
# bench/collect.py renders them into bench/results.md (figures, ratios to a bare pgqueuer
# queue and to the floor, targets). The sizes below fit 15 minutes on an idle 2-core
# machine; BENCH_QUICK=1 runs small sizes (a smoke test of the whole chain, a few minutes).
# BENCH_CONDITIONS="..." is written into results.md (e.g. what else the machine ran).
# Every bench runs even when an earlier one fails; the target fails if any did.
BENCHES := bare_queue heavy_payload fanout regression user_paths loop_throughput \
    step_latency python_isolation status_latency server_api stream_rss pft
ifeq ($(BENCH_QUICK),1)
BENCH_ARGS_bare_queue := --jobs 2000 --steps 50 --rounds 1
BENCH_ARGS_heavy_payload := --rows 40 --kb 64 --batch-size 10 --warmup-rows 4
BENCH_ARGS_fanout := --items 3000 --warmup-items 200
BENCH_ARGS_regression := --rounds 1
BENCH_ARGS_user_paths := --items 1000 --rounds 1 --steps 10 --big-items 0
BENCH_ARGS_loop_throughput := --items 1000 --runs 1
BENCH_ARGS_step_latency := --runs 10
BENCH_ARGS_python_isolation := 300
BENCH_ENV_status_latency := NOETL_BENCH_ITEMS=1000
BENCH_ENV_server_api := NOETL_BENCH_ITEMS=1000 NOETL_BENCH_CONCURRENT=50 NOETL_BENCH_SAMPLES=50
BENCH_ARGS_stream_rss := --rows 200000 --chunk-rows 50000
BENCH_ARGS_pft := --facilities 1 --patients 50
else
BENCH_ARGS_bare_queue := --jobs 10000 --steps 200 --rounds 3
BENCH_ARGS_heavy_payload := --rows 220 --kb 256
BENCH_ARGS_fanout := --items 100000
BENCH_ARGS_regression := --rounds 2
BENCH_ARGS_user_paths := --items 3000 --rounds 3 --steps 100 --big-items 0
BENCH_ARGS_loop_throughput := --items 5000 --runs 3
BENCH_ARGS_step_latency := --runs 60
BENCH_ARGS_python_isolation := 2000
BENCH_ENV_status_latency := NOETL_BENCH_ITEMS=5000
BENCH_ENV_server_api := NOETL_BENCH_ITEMS=5000
BENCH_ARGS_stream_rss := --rows 2000000
BENCH_ARGS_pft := --facilities 2 --patients 200
endif
bench: venv
	@$(PYTHON) bench/collect.py --begin
	@failed=""; \
	$(foreach b,$(BENCHES),echo "==> bench/$(b).py $(BENCH_ARGS_$(b))"; \
	    $(BENCH_ENV_$(b)) $(PYTHON) bench/$(b).py $(BENCH_ARGS_$(b)) || failed="$$failed $(b)";) \
	$(PYTHON) bench/collect.py; \
	if [ -n "$$failed" ]; then echo "make bench: FAILED:$$failed" >&2; exit 1; fi

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
