# Two commands for a newcomer on a fresh machine: `make demo` and `make test`.
# Both create .venv, install torch==2.13.0 (the CPU wheel: no CUDA packages are pulled), then mlquant with its extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= $(abspath ../shared/data)
EXTRAS ?= dev,bnb,confusion,similarity,embed,plot
PYTEST_ARGS ?=

export MLQUANT_DATA_DIR ?= $(DATA_DIR)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

# One torch thread here too: on 2 shared cores, two OpenMP threads stall each other in small decode-step matmuls.
demo: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/mlquant demo

# pytest exits 5 when no test ran: that is a failure, never a pass.
# One torch thread: on 2 shared cores, OpenMP barriers in GPTQ's column loop made 2 threads up to 30x slower.
test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest ran no tests: failing" >&2; exit 1; fi; exit $$rc

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/choice.py

clean:
	rm -rf $(VENV) runs .pytest_cache
