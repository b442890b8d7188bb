# The two commands a newcomer needs:  `make up`  (run the local stack)  and  `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test chaos lint system install images

up: system install
	$(BIN)/talaria up

PYTEST := bash infra/isolated.sh $(BIN)/pytest -p no:cacheprovider -q -rs

# The suite, then the chaos test on its own (it kills services and the broker under load).
test: system install lint images
	$(PYTEST) --durations=15 -m 'not chaos'
	$(PYTEST) -m chaos

chaos: system install images
	$(PYTEST) -m chaos

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

system:
	bash infra/install-system.sh

# The processing tests' module images, built before the suite's network namespace: debootstrap
# needs the Debian mirror.
images: system install
	$(BIN)/python -m tests.executors.images

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@
