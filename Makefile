# make test   set up .venv, build the extension, run the test suite
# make bench  set up .venv, build the extension, benchmark against torch.nn
#
# The CUDA kernels are compiled whenever a CUDA toolkit is found (CUDA_HOME,
# default /usr/local/cuda) for TORCH_CUDA_ARCH_LIST, GPU or not;
# RNNFUSED_CUDA=0 skips them, RNNFUSED_CUDA=1 insists on them.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BENCH_ARGS ?=

CUDA_HOME ?= $(wildcard /usr/local/cuda)
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
MAX_JOBS ?= 2
export CUDA_HOME TORCH_CUDA_ARCH_LIST MAX_JOBS
export PYTHONPATH := $(CURDIR)

.PHONY: setup build test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

build: setup
	$(PY) setup.py -q build_ext --inplace

test: build
	RNNFUSED_REQUIRE_EXTENSION=1 $(PY) -m pytest -q tests

bench: build
	$(PY) benchmarks/bench.py --out benchmarks/results/latest $(BENCH_ARGS)

clean:
	rm -rf build rnnfused/_C*.so rnnfused.egg-info
