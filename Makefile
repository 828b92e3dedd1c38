# kubefit: two commands for a fresh Debian machine, `make demo` and `make test`.
# Each installs what it needs (system packages, the virtualenv, the control-plane build, cached
# under ~/.cache/kubefit) and is safe to run twice, or beside the other.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
KUBEFIT := $(VENV)/bin/kubefit
SANDBOX := $(VENV)/bin/kubefit-sandbox
STAMP   := $(VENV)/.kubefit-installed
PYTEST_ARGS ?=
# `make demo` and `make test` started together must not both run apt and pip: the system and virtualenv
# steps take this lock (flock, util-linux, on every Debian) one make at a time.
KUBEFIT_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/kubefit
SETUP_LOCK    := $(KUBEFIT_CACHE)/setup.lock
# Says why a make is silent: the other one may be installing torch for minutes.
SETUP_LOCK_NOTE = mkdir -p "$(KUBEFIT_CACHE)" && { flock -n "$(SETUP_LOCK)" true || \
	echo "==> waiting for the set-up (apt, pip) that another make is running"; }

.PHONY: help setup system venv tools controlplane demo demo-down check test unit e2e lint crd bench clean

help:
	@echo "make demo       start the local sandbox, the operator and the quickstart job"
	@echo "make demo-down  stop the demo operator and the sandbox"
	@echo "make check      the fast lane: lint, import layers, mypy and the unit tier (no control plane)"
	@echo "make test       the whole suite: lint, unit and end-to-end tests on the real sandbox"
	@echo "make unit       unit tests only;  make e2e  end-to-end tests only"
	@echo "make crd        regenerate crds/ and the chart's CRD from the pydantic models"
	@echo "make bench      run the benchmarks under benchmarks/"

system:
	@$(SETUP_LOCK_NOTE)
	@flock "$(SETUP_LOCK)" bash scripts/setup-system.sh

# Three distributions: the operator (pyproject.toml, with its dev and torch test extras), the sandbox
# (sandbox/pyproject.toml) and the trainer's checkpoint helper (trainer/pyproject.toml). The torch extra
# (CPU torch 2.13.0, for examples/elastic-ddp) took 18 s and 754 MiB here, from the wheel on this disk;
# elsewhere pip downloads it, with its progress shown (scripts/setup-venv.sh).
$(STAMP): pyproject.toml sandbox/pyproject.toml trainer/pyproject.toml
	@$(SETUP_LOCK_NOTE)
	@flock "$(SETUP_LOCK)" bash scripts/setup-venv.sh $(VENV)

venv: system $(STAMP)

# kubectl and helm, fetched once into ~/.cache/kubefit/bin (the unit tier's chart tests use helm, offline).
tools: venv
	@$(SANDBOX) tools >/dev/null

# Cold: about 6 minutes on 2 cores (progress is printed); afterwards cached in ~/.cache/kubefit.
controlplane: venv tools
	@$(SANDBOX) build

setup: controlplane

demo: setup
	@VENV="$(VENV)" bash scripts/demo.sh

demo-down: venv
	@VENV="$(VENV)" bash scripts/demo.sh down

lint: venv
	@$(PYTHON) -m ruff check operator sandbox trainer tests benchmarks examples
	@$(PYTHON) -m ruff format --check operator sandbox trainer tests benchmarks examples
	@$(VENV)/bin/lint-imports --no-cache
	@$(PYTHON) -m mypy

# The fast lane: everything that needs no control plane, in about 3 minutes once installed.
check: lint unit

unit: venv tools
	@$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

e2e: setup
	@$(PYTHON) -m pytest tests/e2e $(PYTEST_ARGS)

test: setup lint
	@$(PYTHON) -m pytest tests $(PYTEST_ARGS)

crd: venv
	@$(KUBEFIT) crd > crds/trainingjob.yaml
	@cp crds/trainingjob.yaml charts/kubefit/crds/trainingjob.yaml
	@echo "wrote crds/trainingjob.yaml and charts/kubefit/crds/trainingjob.yaml"

# Every benchmark with its defaults: an hour or more on 2 cores (horizon_sandbox.py fills 5,000 simulated
# nodes with 2,000 jobs and waits up to an hour for them; scale_500.py takes 4-6 minutes); the helpers they import
# are not benchmarks. `make bench BENCH_ARGS_scale_500="--jobs 100 --changes 20"` gives one of them arguments.
BENCH_HELPERS := benchmarks/operator_process.py benchmarks/profiled_operator.py benchmarks/baselines.py
bench: setup
	@for script in $(filter-out $(BENCH_HELPERS),$(wildcard benchmarks/*.py)); do \
		name=$$(basename $$script .py); args_var="BENCH_ARGS_$$name"; \
		echo "==> $$script $${!args_var}"; $(PYTHON) $$script $${!args_var} || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
