# Dissecting Adam: reference reproduction. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist): one per core, at most four (each holds a torch).
TEST_JOBS ?= auto
PROBLEMS ?= all
PROFILE ?= paper
LAUNCHER ?= auto
RESULTS ?= results
# A folder of original downloads (e.g. ../shared/data): data is copied from it, not downloaded.
export DATA_MIRROR

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv from nothing and install the package with dev extras

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: install ## Run the fast test suite (CPU, a few minutes; TEST_JOBS=1 for one process)
	$(PY) -m pytest -m "not slow" -n $(TEST_JOBS) --maxprocesses=4 $(PYTEST_ARGS)

test-all: install ## Run every test, slow ones included
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install ## Check style with ruff
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

format: install ## Format the code with ruff
	$(VENV)/bin/ruff format src tests scripts
	$(VENV)/bin/ruff check --fix src tests scripts

bench: install ## Time one optimizer step on WRN-40-4's shapes vs torch.optim.Adam
	$(PY) scripts/bench_optim.py

data: install ## Download (or copy from DATA_MIRROR), verify, preprocess data: PROBLEMS=a,b
	$(PY) scripts/prepare_data.py "problems=[$(PROBLEMS)]"

bench-problems: install ## Time input pipeline vs model per problem (CPU; CUDA if present)
	$(PY) scripts/bench_problems.py

train: install ## One run: make train ARGS="problem=fmnist_2c2d optimizer=msvag optimizer.lr=0.3 seed=3"
	$(PY) scripts/train.py $(ARGS)

smoke: install ## A run of a few seconds on real Fashion-MNIST (needs data/ or DATA_MIRROR)
	$(PY) scripts/train.py problem=fmnist_2c2d optimizer=msvag profile=smoke

collect: install ## Gather results/$(PROFILE) into results/$(PROFILE)/runs.parquet
	$(PY) scripts/collect.py --profile $(PROFILE)

bench-minibatch: install ## Extra cost per step of mini-batch variance estimates (M-SVAG-mb vs M-SVAG)
	$(PY) scripts/bench_minibatch.py

bench-runner: install ## Runner overhead vs a bare loop, and one evaluation pass (~2 min on a CPU)
	$(PY) scripts/bench_runner.py

gpu-check: install ## One timed check on a GPU machine -> results/gpu_check/report.md (ARGS="--budget-s 780"; CPU self-check: ARGS="--device cpu --tiny")
	$(PY) scripts/gpu_check.py $(ARGS)

fig2: install ## Fig. 2: SGD vs SSD on stochastic quadratic problems (~2-4 min on 2 CPU cores)
	$(PY) scripts/fig2.py

fig3: install ## Fig. 3: the variance adaptation factors (seconds)
	$(PY) scripts/fig3.py

wilson: install ## Wilson et al. construction, Lemmas 2-3 (~1 min)
	$(PY) scripts/wilson.py

reproduce-fig5: install ## Fig. 5 end to end: PROFILE=paper|preview|smoke PROBLEMS=a,b LAUNCHER=auto|basic|packed|joblib|submitit_slurm ARGS=overrides
	$(PY) scripts/migrate_store.py --quiet $(RESULTS)
	$(PY) scripts/reproduce.py profile=$(PROFILE) $(if $(filter all,$(PROBLEMS)),,"problems=[$(PROBLEMS)]") launcher=$(LAUNCHER) $(ARGS)

plan-fig5: install ## What reproduce-fig5 would run next and what the store holds (seconds; runs nothing)
	$(PY) scripts/reproduce.py profile=$(PROFILE) $(if $(filter all,$(PROBLEMS)),,"problems=[$(PROBLEMS)]") dry_run=true $(ARGS)

reproduce-extended: install ## Fig. 5's methods + M-SSD-VA, M-SSD-erf (§C) and M-SVAG-mb (§D): PROFILE, PROBLEMS, LAUNCHER as above
	$(PY) scripts/migrate_store.py --quiet $(RESULTS)
	$(PY) scripts/reproduce.py --config-name reproduce_extended profile=$(PROFILE) $(if $(filter all,$(PROBLEMS)),,"problems=[$(PROBLEMS)]") launcher=$(LAUNCHER) $(ARGS)

migrate-store: install ## Move RESULTS=results's runs to the current identity format, once (nothing retrains)
	$(PY) scripts/migrate_store.py $(RESULTS)

test-slurm: install ## The SLURM launcher on a private one-node SLURM cluster (root; installs slurm-wlm)
	PY=$(PY) scripts/test_slurm.sh

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache

.PHONY: help install test test-all lint format bench data bench-problems train smoke collect bench-runner gpu-check fig2 fig3 wilson reproduce-fig5 plan-fig5 reproduce-extended migrate-store bench-minibatch test-slurm clean
