# bertserve developer commands. Everything runs from a project-local virtual environment.
#   make serve [ARGS="--demo"]   install the runtime dependencies into .venv, then run
#                                `bertserve serve $(ARGS)` (default model: bert-base-cased)
#   make test  [PYTEST_ARGS=...] install the runtime dependencies, the dev extras (.[dev]) and buf,
#                                then run the whole test suite
#   make setup / make setup-dev  only the installs of `serve` / `test`
#   make protos                  regenerate client/bertserve/v1 from protos/ (commit the result)
#   make lint                    ruff + mypy --strict + buf lint (protos/)
#
# Every install uses constraints.txt, which pins torch, transformers, ray, grpcio, protobuf and a
# few more (the Dockerfile uses the same file). The dev set-up also installs buf, the protos'
# linter, from the npm registry (BUF_VERSION below; it needs Node.js's npm) into .tools/.
#
# Which torch build you get. constraints.txt pins the version (torch==2.13.0); the index decides
# the build:
#   make serve
#       pip's configured index. On PyPI, torch for Linux x86_64 is a CUDA build, and pip also
#       downloads several GB of nvidia-* wheels (CUDA runtime, cuBLAS, cuDNN, NCCL, ...). Right for
#       a machine with an NVIDIA GPU. (Where pip is configured with a local torch wheel, e.g. a CPU
#       build in its find-links, the default takes that wheel. macOS wheels are CPU builds.)
#   make serve TORCH_INDEX=https://download.pytorch.org/whl/cpu
#       PyTorch's CPU-only build (torch 2.13.0+cpu, a wheel of about 190 MB, no nvidia-* wheels).
#       For a machine without a GPU.
#   make serve TORCH_INDEX=https://download.pytorch.org/whl/cu126
#       a build for another CUDA version (PyTorch's install page lists the indexes), e.g. for an
#       NVIDIA driver too old for PyPI's build.
# TORCH_INDEX only applies when the venv is first set up (or pyproject.toml / constraints.txt
# change); to switch builds later, remove the venv (rm -r .venv) and run make again.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
TORCH_INDEX ?=
ARGS ?=
PYTEST_ARGS ?=

# What `make lint` runs ruff on (tests/unit/test_static_checks.py reads this line); mypy --strict's
# set is in scripts/typecheck.py.
LINT_PATHS := server workers jobs client/bertserve_client tests scripts bench
PIP := $(VENV)/bin/python -m pip
PIP_INSTALL := $(PIP) install --constraint $(CONSTRAINTS)
TORCH_INDEX_FLAG := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
# Two stamps: a runtime-only install (`make serve`) followed by `make test` still installs the
# dev extras. Editing pyproject.toml or constraints.txt redoes both.
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
# buf for `make lint` and tests/unit/test_proto_lint.py (which reads BUF_VERSION and finds it here):
# the npm package @bufbuild/buf at this version, in a git-ignored folder named after it.
BUF_VERSION := 1.75.0
BUF_DIR := .tools/buf-$(BUF_VERSION)
BUF := $(BUF_DIR)/node_modules/.bin/buf

.PHONY: setup setup-dev serve test protos lint

$(RUNTIME_STAMP): pyproject.toml client/pyproject.toml $(CONSTRAINTS)
	@echo "==> setup 1/4: create the virtual environment $(VENV) (seconds)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> setup 2/4: upgrade pip in it (seconds)"
	$(PIP) install --upgrade pip
	@echo "==> setup 3/4: torch$(if $(TORCH_INDEX), from $(TORCH_INDEX)) (a CPU build: about 1 minute;"
	@echo "    PyPI's CUDA build on Linux: several GB, minutes; see the top of this Makefile)"
	$(PIP_INSTALL) $(TORCH_INDEX_FLAG) torch
	@echo "==> setup 4/4: bertserve, its client and their runtime dependencies (ray, transformers,"
	@echo "    grpcio, ...: about 1-2 minutes)"
	$(PIP_INSTALL) -e ./client -e .
	@touch $@
	@echo "==> setup done: $(VENV) has the runtime dependencies ($(VENV)/bin/bertserve serve --help)"

$(DEV_STAMP): $(RUNTIME_STAMP) pyproject.toml
	@echo "==> setup-dev: the dev extras .[dev] (pytest, hypothesis, mypy, ruff, grpcio-tools;"
	@echo "    ray[serve] and matplotlib for bench/: about 1-2 minutes)"
	$(PIP_INSTALL) -e ./client -e ".[dev]"
	@touch $@
	@echo "==> setup-dev done"

$(BUF):
	@echo "==> setup-dev: buf $(BUF_VERSION) from the npm registry into $(BUF_DIR) (seconds; needs npm)"
	@command -v npm >/dev/null || { echo "npm (Node.js) is needed to install buf, the protos' linter"; exit 1; }
	npm install --prefix $(BUF_DIR) --no-save --no-audit --no-fund --ignore-scripts "@bufbuild/buf@$(BUF_VERSION)"
	$(BUF) --version

setup: $(RUNTIME_STAMP)

setup-dev: $(DEV_STAMP) $(BUF)

serve: setup
	$(VENV)/bin/bertserve serve $(ARGS)

test: setup-dev
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

protos: setup-dev
	$(VENV)/bin/python scripts/gen_protos.py

lint: setup-dev
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/python scripts/typecheck.py
	cd protos && $(CURDIR)/$(BUF) lint
