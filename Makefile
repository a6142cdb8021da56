# bertserve developer commands. Everything runs from a project-local virtual environment.
#   make serve [ARGS="--demo"]   set up .venv, then `bertserve serve $(ARGS)` (default model: bert-base-cased)
#   make test  [PYTEST_ARGS=...] set up .venv, then run the whole test suite
#   make protos                  regenerate client/bertserve/v1 from protos/ (commit the result)
#   make lint                    ruff + mypy --strict
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; on a GPU machine use TORCH_SPEC=torch (PyPI's CUDA build).
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: setup serve test protos lint

$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q -e ./client -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

serve: setup
	$(VENV)/bin/bertserve serve $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

protos: setup
	$(VENV)/bin/python scripts/gen_protos.py

lint: setup
	$(VENV)/bin/ruff check server workers client/bertserve_client tests scripts
	$(VENV)/bin/ruff format --check server workers client/bertserve_client tests scripts
	$(VENV)/bin/python scripts/typecheck.py
