# Set-up and the two commands README starts with. Everything goes into a local virtualenv.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch keeps the install small; GPU users: `make TORCH=torch venv`.
TORCH ?= torch==2.13.0
EXTRAS ?= dev,wandb,docs,mnist,dataset,diffusion,lidar,graphs,vision
# Trained teachers are cached where the CLI caches them by hand: $LIGHTNING_DISTILL_CACHE, else
# ~/.cache/lightning_distill (so README's commands reuse what `make demo` trained, and `make clean` keeps them).
export NO_MKDOCS_2_WARNING := 1

.PHONY: venv demo test lint docs bench clean

$(VENV)/.installed: pyproject.toml setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

## The main job: MEAL V2 on the bundled digits, with a progress bar; ends with the student's and teachers'
## test metrics and a line "Result (test): student acc ... vs teachers ...". About a minute on a 2-core CPU
## the first time (teachers and the student's starting checkpoint are trained and cached), then ~35 s.
## One thread: these tiny networks run several times slower with two threads on two busy cores.
demo: venv
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/lightning-distill fit --config recipes/meal_v2/config.yaml

## The tests (unit, recipe smoke runs, doctests), lint and the strict docs build. Every test runs on one
## thread, so pytest-xdist spreads them over the cores (TEST_WORKERS=0 runs them in one process).
TEST_WORKERS ?= auto
test: venv
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline $(PY) -m pytest -q --durations=15 \
		-n $(TEST_WORKERS) --dist worksteal
	$(VENV)/bin/ruff check lightning_distill tests benchmarks
	$(VENV)/bin/mkdocs build --strict -q -d $(CURDIR)/.cache/site

lint: venv
	$(VENV)/bin/ruff check lightning_distill tests benchmarks
	$(VENV)/bin/ruff format --check lightning_distill tests benchmarks

docs: venv
	$(VENV)/bin/mkdocs build --strict

## Quality and speed benchmarks (hours on a 2-core CPU; they rewrite the tables in recipes/*/README.md
## and benchmarks/results/). One benchmark: `make bench BENCHES=benchmarks/msd.py`.
BENCHES ?= $(filter-out benchmarks/_%,$(sort $(wildcard benchmarks/*.py)))
bench: venv
	@set -e; for b in $(BENCHES); do echo "== $$b"; $(PY) $$b --threads 1; done

clean:
	rm -rf $(VENV) .cache runs site

## Every registered recipe under DDP (2 CPU processes), bf16-mixed and FSDP2, checked against one
## process; rewrites the table in docs/strategies.md (about an hour on a 2-core CPU).
.PHONY: matrix
matrix: venv
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline $(PY) tools/strategy_matrix.py
