# make test   set up .venv, build the extension, run the test suite
# make bench  set up .venv, build the extension, benchmark against torch.nn
# make sanitize  build the C++ sources with AddressSanitizer + UndefinedBehaviorSanitizer
#             into build/sanitize (the normal build is untouched) and run the CPU tests on it
#             (SANITIZE_TESTS=tests/test_ops.py runs a part)
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

.PHONY: setup build test bench sanitize clean

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

# distutils appends CFLAGS / LDFLAGS to every compile and link; the package is
# copied next to the sanitized _C so that `import rnnfused` loads that one.
# CPython and torch leak at exit by design (detect_leaks=0); torch's CUDA libraries
# need the shadow gap unprotected. UBSan findings are fatal (halt_on_error). The tests
# that measure the process's memory are left out: ASan's redzones, shadow and
# quarantine are what they would measure.
SANITIZE_DIR := build/sanitize
SANITIZE_TESTS ?= tests
SANITIZE_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -O1 -g
sanitize: setup
	rm -rf $(SANITIZE_DIR)/pkg
	CFLAGS="$(SANITIZE_FLAGS)" LDFLAGS="-fsanitize=address,undefined" RNNFUSED_CUDA=0 \
		$(PY) setup.py -q build_ext --build-lib $(SANITIZE_DIR)/lib --build-temp $(SANITIZE_DIR)/temp
	mkdir -p $(SANITIZE_DIR)/pkg/rnnfused
	cp rnnfused/*.py $(SANITIZE_DIR)/pkg/rnnfused/
	cp $(SANITIZE_DIR)/lib/rnnfused/_C*.so $(SANITIZE_DIR)/pkg/rnnfused/
	cd $(SANITIZE_DIR)/pkg && export PYTHONPATH=$(CURDIR)/$(SANITIZE_DIR)/pkg \
		LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0:protect_shadow_gap=0:alloc_dealloc_mismatch=0 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 RNNFUSED_REQUIRE_EXTENSION=1 && \
		$(CURDIR)/$(PY) -c "import rnnfused.ops as o; assert o.EXTENSION_LOADED and \
			o.__file__.startswith('$(CURDIR)/$(SANITIZE_DIR)/pkg'), o.__file__" && \
		$(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider --rootdir $(CURDIR) \
			-k "not memory_constant_in_T and not memory_flat and not memory_linear_in_T" \
			$(addprefix $(CURDIR)/,$(SANITIZE_TESTS))

clean:
	rm -rf build rnnfused/_C*.so rnnfused.egg-info
