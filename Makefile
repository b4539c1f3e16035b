# The two set-up commands: `make devnet` and `make test`. Both create .venv with Python 3.11+.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: devnet devnet-down install install-test test lint bench clean help

help:
	@echo "make devnet       create .venv, install, bring up a whole local psvn network"
	@echo "                  (PORT=N: base port, default 14222; console on N+8, gateways N+10..N+14)"
	@echo "make devnet-down  stop it"
	@echo "make test         install what the tests need and run the whole suite"
	@echo "make lint         ruff, mypy, the layers contract (import-linter) and deptry"
	@echo "make bench        psvn bench against the running devnet"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml clients/python/pyproject.toml
	$(BIN)/pip install --quiet -e . -e clients/python
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# make devnet PORT=20000: nats-server on PORT (monitoring PORT+1), console PORT+8, gateways PORT+10..
PORT ?=

devnet: install
	$(BIN)/psvn devnet up --detach $(if $(PORT),--base-port $(PORT))

devnet-down: install
	$(BIN)/psvn devnet down

# ruff and mypy; the layers contract (pyproject [tool.importlinter]); every import declared (deptry)
lint: install-test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/deptry .
	cd clients/python && ../../$(BIN)/deptry .

test: lint
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/psvn bench

clean:
	rm -rf $(VENV) .devnet
