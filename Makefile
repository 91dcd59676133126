# moedge: `make demo` runs the main job on the default model, `make test` runs the test suite.
# Both set up .venv first (pinned by constraints.txt; torch 2.13.0 CPU).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUILD := build
PROMPT ?= def __init__(self
TOKENS ?= 48

.PHONY: setup peers demo test lint clean check-arm64

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# numba compiles the runtime's kernels once per CPU and version of their sources (~1 min); here rather than
# in the first run. `moedge warmup` compiles only what numba's cache lacks (~1 s when it lacks nothing).
$(VENV)/.kernels-warm: $(BIN)/.installed $(wildcard runtime/*.py runtime/tools/*.py)
	$(BIN)/moedge warmup
	touch $@

setup: $(BIN)/.installed $(VENV)/.kernels-warm

# llama.cpp as a `moedge bench --peers` peer: builds it from source with pip (several minutes).
peers: setup
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,llama]'

demo: setup
	$(BIN)/moedge export samples/default-moe -o $(BUILD)/default.moedge --force
	$(BIN)/moedge run $(BUILD)/default.moedge --prompt "$(PROMPT)" -n $(TOKENS) --temperature 0.7 --top-k 40 --seed 0

lint: setup
	$(BIN)/ruff check exporter runtime quant cli server tests samples benchmarks tools

test: lint
	$(BIN)/pytest -q

# The runtime on aarch64 against this machine: a Debian arm64 root under qemu-user (built once, ~6 min, kept in
# ~/.cache/moedge/arm64-root), the runtime pip-installed there without torch or onnx, the logits of every
# quantization scheme compared with x86's and tokens generated through the CLI. Needs root, debootstrap and
# qemu-user-static; slow (numba compiles under emulation), so not part of `test`.
check-arm64: setup
	PYTHON=$(BIN)/python tools/arm64/check.sh

clean:
	rm -rf $(BUILD) $(VENV)
