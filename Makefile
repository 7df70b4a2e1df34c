# charrnn developer commands. `make demo` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install demo test test-fast lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,serve]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install charrnn, its server and its test tools (CPU torch)

demo: $(STAMP) ## build a vocab, train ~2 minutes on the offline default corpus, sample
	$(BIN)/charrnn vocab build builtin:python-docs -o runs/demo/vocab.json
	$(BIN)/charrnn vocab show runs/demo/vocab.json --top 5
	$(BIN)/charrnn train --config configs/default.yaml --set train.out_dir=runs/demo \
		--set data.vocab=runs/demo/vocab.json --overwrite
	$(BIN)/charrnn eval --checkpoint runs/demo
	$(BIN)/charrnn sample --checkpoint runs/demo --temperature 0.7 --length 600 --seed 7 \
		--prime "The "

test: $(STAMP) ## run the whole test suite (under 15 minutes on 2 CPU cores)
	$(BIN)/pytest

test-fast: $(STAMP) ## the tests not marked slow
	$(BIN)/pytest -m "not slow"

lint: $(STAMP) ## ruff over the package, tests and benchmarks
	$(BIN)/ruff check charrnn tests bench

bench: $(STAMP) ## the benchmarks of BENCHMARKS.md (long: about 25 minutes)
	$(BIN)/python bench/run.py

clean: ## remove the virtual environment and caches (runs/ and data/ are kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
