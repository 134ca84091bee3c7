# Two set-up commands: `make demo` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch on CPU-only machines; GPU machines that already have torch keep theirs.
TORCH_SPEC ?= torch==2.13.0
PCLUSTER_SPEC ?= aws-parallelcluster==3.16.1
# DeepSpeed (a test dependency: the HF Trainer example with ds_config.json) is built here from its sdist with
# its shared-memory communication op compiled in (DS_BUILD_SHM_COMM=1), so no run JIT-compiles it (~1 min of
# CPU at each first start otherwise); against the torch above (no build isolation), not from a cached wheel
# built without the op.
DEEPSPEED_SPEC ?= deepspeed==0.19.8

.PHONY: venv demo test lint bench mutate clean slurm-up slurm-down

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q setuptools wheel ninja py-cpuinfo psutil
	DS_BUILD_SHM_COMM=1 DS_ACCELERATOR=cpu $(PIP) install -q --no-build-isolation --no-cache-dir "$(DEEPSPEED_SPEC)"
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps "$(PCLUSTER_SPEC)"
	touch $@

demo: venv
	$(VENV)/bin/mltrain data prepare configs/demo.yaml
	$(VENV)/bin/mltrain train configs/demo.yaml --nproc 2
	$(VENV)/bin/mltrain report demo
	$(VENV)/bin/mltrain sample demo --prompt "def " --max-new-tokens 60 --seed 0

# The real-Slurm tests (one at a time, one local cluster) and the Spark tests (one at a time, one session) run
# alongside the rest (two pytest-xdist workers): scripts/run-tests.sh. The Debian packages the tests start (Slurm, Prometheus, shellcheck)
# are installed first, once; the import contracts (pyproject.toml, docs/architecture.md) are checked
# before any test runs.
test: venv
	bash scripts/test-deps.sh
	$(VENV)/bin/lint-imports
	bash scripts/run-tests.sh

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/lint-imports

bench: venv
	$(PY) bench/train_throughput.py
	$(PY) bench/checkpoint.py
	$(PY) bench/loader.py

# Mutation tests (mutmut) of the modules where a silent bug loses data: slow, not part of `make test`.
# `make mutate MODULES="lease loader"` runs some; results in bench/results/mutation-<date>.json.
MUTATE_CHILDREN ?= 1
mutate: venv
	$(PY) bench/mutate.py --max-children $(MUTATE_CHILDREN) $(MODULES)

slurm-up:
	bash scripts/local-slurm/up.sh

slurm-down:
	bash scripts/local-slurm/down.sh

clean:
	rm -rf $(VENV) runs data/demo
