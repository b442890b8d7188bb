# The two commands a newcomer needs:  `make up`  (run the local stack)  and  `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test chaos lint system install

up: system install
	$(BIN)/talaria up

PYTEST := bash infra/isolated.sh $(BIN)/pytest -p no:cacheprovider -q -rs

# The suite, then the chaos test on its own (it kills services and the broker under load).
test: system install lint
	$(PYTEST) --durations=15 -m 'not chaos'
	$(PYTEST) -m chaos

chaos: system install
	$(PYTEST) -m chaos

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

system:
	bash infra/install-system.sh

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@
