# Two commands (see README.md):  `make chat`  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

# llama-cpp-python compiles llama.cpp for this CPU (-march=native). Its AMX kernels
# crash on some Sapphire Rapids virtual machines (segfault in ggml_backend_amx_mul_mat,
# llama.cpp#20824), including the ones slmrun is developed on; build without them
# where the CPU has AMX. Explicit -mno-* flags win over -march=native in GCC.
#
# GGML_RPC=ON adds llama.cpp's RPC backend (`slmrun rpc-server`, `--rpc HOST:PORT`): a
# model split across several machines. slmrun works without it; only --rpc needs it.
LLAMA_CMAKE := -DGGML_RPC=ON
ifeq ($(shell grep -qw amx_int8 /proc/cpuinfo 2>/dev/null && echo yes),yes)
NO_AMX := -mno-amx-int8 -mno-amx-tile -mno-amx-bf16
LLAMA_CMAKE += -DCMAKE_C_FLAGS="$(NO_AMX)" -DCMAKE_CXX_FLAGS="$(NO_AMX)"
endif
export CMAKE_ARGS ?= $(LLAMA_CMAKE)
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: setup browser chat test test-fast bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[test]'
	@# pip reuses a cached wheel whatever CMAKE_ARGS say: one built without the RPC
	@# backend is rebuilt once, uncached, with it.
	@$(BIN)/python -c "import llama_cpp, pathlib, sys; \
	  sys.exit(not list((pathlib.Path(llama_cpp.__file__).parent / 'lib').glob('*ggml-rpc*')))" || \
	  $(BIN)/python -m pip install --no-cache-dir --force-reinstall --no-deps \
	    "llama-cpp-python==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
	touch $@

setup: $(VENV)/.installed
	$(BIN)/slmrun pull smollm2-135m

# The server's tests drive its chat page in Debian's headless Chromium and read raw
# server-sent events with curl: install them once (quiet, and nothing to do when present).
BROWSER_TOOLS := chromium chromedriver curl
browser:
	@missing=""; for t in $(BROWSER_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "The tests need$$missing: sudo apt-get install chromium chromium-driver curl" >&2; exit 1; fi; \
	  echo "installing chromium, chromium-driver and curl for the server's tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver curl >/dev/null; \
	fi

chat: setup
	@$(BIN)/slmrun chat

test: setup browser
	$(BIN)/python -m pytest

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -m 'not real_model and not slow'

bench: setup
	$(BIN)/python benchmarks/compare_llama_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
