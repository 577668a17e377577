# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv and install lookhere into it; nothing outside .venv is needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch first and exactly: an unpinned or looser requirement can pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	@$(BIN)/python -c "import importlib.util as u, sys; \
	  sys.exit('torchvision is installed in .venv and breaks transformers here' \
	  if u.find_spec('torchvision') else 0)"
	touch $(STAMP)

# Every test, slow and distributed ones included, in two pytest-xdist workers (one per core of
# the 2-core machines this runs on; `-n auto` gives the same there): each test module runs whole
# in one worker (--dist loadscope), so its module fixtures are built once and its tests keep
# their order. One torch thread per worker: two workers already fill 2 cores.
# Its times: docs/benchmarks.md, "The test suite".
test: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadscope

# The papers' three claims on the shipped pretrained checkpoint (lookhere:llava-mini): about
# 7 minutes on 2 idle CPU cores, install excluded, in two one-thread processes.
# A finished runs/demo is moved aside to runs/demo.<time>, never overwritten.
demo: $(STAMP)
	@if [ -d runs/demo ]; then mv runs/demo runs/demo.$$(date +%Y%m%d-%H%M%S); fi
	$(BIN)/lookhere demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/probe.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
