# osmi-ee: the OSMI inference benchmark over parameter grids.
#   make demo                      install, export models, run the local grid, write the report
#   make test                      install and run the test suite
#   make triton                    the local Triton and perf_analyzer (build/triton-env), installed and checked
#   make models|generate|run|submit|status|analyze [EXPERIMENT=experiments/<grid>.yaml]
#   make search [EXPERIMENT=experiments/search.yaml]   find each configuration's peak load under the objective, then analyze
#   make bench                     measure the tool itself (build/bench.json; BENCH_ARGS=--quick)
#   make <target> ARGS="..."       pass flags and overrides to osmi-ee (e.g. ARGS="measure.duration_s=5")
#   make clean                     remove runs/ and build/
SHELL := /bin/bash
EXPERIMENT ?= experiments/local.yaml
VENV ?= .venv
PY := $(VENV)/bin/python
OSMI := $(PY) -m osmi_ee.ee.cli
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
ARGS ?=
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help install system models generate run submit status analyze demo test bench clean triton search

help:
	@sed -n 's/^#   //p' Makefile

# The virtual environment, rebuilt only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing osmi-ee and its dependencies into $(VENV) (first time: a few minutes)"
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[serve,test]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(PY) -c 'import osmi_ee.ee.cli, tensorflow_serving.apis' 2>/dev/null || { echo "install failed: see the pip output above" >&2; exit 1; }
	@touch $(STAMP)

install: $(STAMP) system

# System parts: Debian's HAProxy (installed when missing and we are root).
system:
	@command -v haproxy >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's haproxy"; \
	    (apt-get install -y -qq haproxy >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; }); \
	  else echo "HAProxy is missing: install it (Debian/Ubuntu: sudo apt-get install haproxy)" >&2; exit 1; fi; }

models: install
	@$(OSMI) models --grid $(EXPERIMENT) $(ARGS)

generate: install
	@$(OSMI) generate --grid $(EXPERIMENT) $(ARGS)

run: install
	@$(OSMI) run --grid $(EXPERIMENT) $(ARGS)

submit: install
	@$(OSMI) submit --grid $(EXPERIMENT) $(ARGS)

status: install
	@$(OSMI) status --grid $(EXPERIMENT) $(ARGS)

analyze: install
	@$(OSMI) analyze --grid $(EXPERIMENT) $(ARGS)

# The whole local sweep, end to end; the last line names the dataset.
demo: install
	@$(OSMI) models --grid $(EXPERIMENT)
	@$(OSMI) generate --grid $(EXPERIMENT) $(ARGS)
	@$(OSMI) run --grid $(EXPERIMENT); rc=$$?; $(OSMI) analyze --grid $(EXPERIMENT) || exit $$?; exit $$rc

# The peak search: per configuration, doubling then bisection of the load (clients or rate) to the
# highest one whose run is VALID, stable and meets objective.p99_ms; every step is a run of the sweep.
search: EXPERIMENT = experiments/search.yaml
search: install
	@$(OSMI) models --grid $(EXPERIMENT)
	@$(OSMI) search --grid $(EXPERIMENT) --analyze $(ARGS)

# Triton from PyPI (tritonserver 2.51 + python backend, perf_analyzer) in a Debian Python 3.11
# environment; idempotent; the check fails loudly on a wrong numpy (0-byte answers otherwise).
triton: install
	@$(OSMI) setup triton

test: install triton
	@$(PY) -m pytest $(PYTEST_ARGS)

# Measure the tool itself (client CPU vs bare gRPC and the OSMI-style client, start-up, RSS,
# HAProxy efficiency, generate and analyze speed, accounting under load (64 clients),
# reproducibility (one grid swept twice, osmi-ee compare), our client vs perf_analyzer on TF-Serving's
# API and on Triton (osmi-ee calibrate; needs `make triton`)); figures in build/bench.json, the last
# stdout line is the same JSON object. BENCH_ARGS=--quick for a smoke run.
BENCH_ARGS ?=
bench: install triton
	@$(PY) -m osmi_ee.bench $(BENCH_ARGS)

clean:
	rm -rf runs build .pytest_cache
