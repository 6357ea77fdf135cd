# One command each, on a fresh machine (Python 3.11, gcc, optionally nvcc):
#   make test    venv + pinned deps + extension build + the test suite
#   make demo    the main job: train ITEACH-Net on synthetic conversations, then evaluate (UME)
#   make bench   kernel benchmarks, report under runs/bench/ (git ignores it)
# Re-running is fast: the venv is rebuilt only when requirements.txt changes and the
# extension only when csrc/ or setup.py changes (ninja recompiles just what changed).
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
DEPS := $(VENV)/.stamp-deps
EXT := $(VENV)/.stamp-ext
# TORCH_CUDA_ARCH_LIST unset: setup.py builds for this machine's GPU, or 8.0;9.0 where there is none
export MAX_JOBS ?= 2

.PHONY: test demo bench build clean

$(DEPS): requirements.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt
	ITEACH_FAST_NO_EXT=1 $(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

$(EXT): $(DEPS) setup.py iteach_fast/__init__.py $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)
	@echo "building iteach_fast._C ..."; start=$$(date +%s); \
	$(PYTHON) setup.py -q build_ext --inplace && \
	echo "iteach_fast._C built in $$(( $$(date +%s) - start )) s"
	touch $@

build: $(EXT)

test: build
	$(VENV)/bin/ruff check .
	$(PYTHON) -m pytest -q tests

demo: build
	$(PYTHON) -m iteach_fast demo

bench: build
	$(PYTHON) -m iteach_fast bench $(BENCH_ARGS)

clean:
	rm -rf build iteach_fast/_C*.so $(EXT)
