# Two commands matter (see README): `make demo` runs the example sync, `make test` runs the tests.
# Both create their own virtual environment, so they work on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test demo bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[demo]"
	touch $@

test: $(VENV)/.installed-test
	scripts/ensure-postgres.sh
	scripts/ensure-mariadb.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

demo: $(VENV)/.installed-demo
	$(BIN)/python scripts/demo.py

bench: $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	scripts/ensure-postgres.sh
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .demo .bench tests/differential/segment_harness/node_modules
