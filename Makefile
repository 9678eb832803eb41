# Two commands do everything on a fresh machine with only Python:
#   make test   create .venv, install bertzoo (+ the example plugin) and run the test suite
#   make demo   pretrain a tiny BERT on text that ships with Python, export it, print metrics
#   make test-oldest   the test suite again with the oldest Lightning pyproject.toml allows
PYTHON ?= python3
# The CPU build of torch that lies on this machine's disk; a bare `torch` pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PLUGINS := $(wildcard plugins/*/pyproject.toml)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# The oldest Lightning of pyproject.toml's range ("lightning>=X"), in a venv of its own.
OLDEST_VENV ?= .venv-oldest
LIGHTNING_OLDEST := $(shell sed -n 's/^ *"lightning>=\([0-9.]*\)[,"].*/\1/p' pyproject.toml)

.PHONY: install test test-oldest demo clean

install: $(STAMP)

$(STAMP): pyproject.toml $(PLUGINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]" $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-oldest:
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(OLDEST_VENV)/bin/python -m pip install --quiet "$(TORCH)" -e ".[test]" \
		$(foreach p,$(PLUGINS),-e $(dir $(p))) "lightning==$(LIGHTNING_OLDEST)"
	$(OLDEST_VENV)/bin/python -c "import lightning; from packaging.version import Version as V; \
		assert V(lightning.__version__) == V('$(LIGHTNING_OLDEST)'), lightning.__version__"
	$(OLDEST_VENV)/bin/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m bertzoo.demo

clean:
	rm -rf $(VENV) $(OLDEST_VENV) runs .pytest_cache
