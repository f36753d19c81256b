# make run   set up (first time) and run the main recipe
# make lint  set up (first time) and run ruff (the rules are in pyproject.toml)
# make test  set up (first time), lint, and run the test suite
# make docs  regenerate docs/guide/config-reference.md from the config classes' field docs
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= recipes/rlhf.yaml
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run lint test bench docs clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	# constraints.txt pins the CPU build of torch so that nothing pulls a multi-GB CUDA build.
	$(VENV)/bin/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) -m pipeline run $(RECIPE)

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(PY) -m pytest -q

docs: setup
	$(PY) -m pipeline.recipe.reference

bench: setup
	$(PY) bench/sft_overhead.py

clean:
	rm -rf runs .pytest_cache
