# Set-up and the two commands README starts with. Everything goes into a local virtualenv.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch keeps the install small; GPU users: `make TORCH=torch venv`.
TORCH ?= torch==2.13.0
EXTRAS ?= dev,wandb,docs,mnist,dataset,diffusion,lidar,graphs
export LIGHTNING_DISTILL_CACHE ?= $(CURDIR)/.cache/lightning_distill
export NO_MKDOCS_2_WARNING := 1

.PHONY: venv demo test lint docs bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

## The main job: MEAL V2 on the bundled digits; prints the student's and teachers' test metrics.
demo: venv
	$(VENV)/bin/lightning-distill fit --config recipes/meal_v2/config.yaml --trainer.enable_progress_bar=false

## The tests (unit, recipe smoke runs, doctests), lint and the strict docs build.
test: venv
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline $(PY) -m pytest -q
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
