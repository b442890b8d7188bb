# The two commands a newcomer needs:  `make up`  (run the local stack)  and  `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test chaos lint system install

up: system install
	$(BIN)/talaria up

test: system install lint
	bash infra/isolated.sh $(BIN)/pytest -p no:cacheprovider -q -rs --durations=15 -m 'not chaos'

# Kills services and the broker under load; run on its own (see tests/e2e/test_chaos.py).
chaos: system install
	bash infra/isolated.sh $(BIN)/pytest -p no:cacheprovider -q -rs -s -m chaos

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
