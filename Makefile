# Every target bootstraps .venv by itself: a fresh clone needs only python3 (3.11+) and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo serve test bench clean

install: $(STAMP)

# torch first, pinned: an unpinned torch pulled by a dependency would fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/picserve demo

serve: $(STAMP)
	$(BIN)/picserve serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Benchmarks are run by hand; their numbers go to docs/performance.md.
bench: $(STAMP)
	$(BIN)/python bench/sizes.py --models-dir .bench-models
	$(BIN)/python bench/submodels.py

clean:
	rm -rf $(VENV) out .pytest_cache .bench-models
