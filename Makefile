# fusiongym: `make demo` and `make test` work on a fresh machine (2 cores, no GPU needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml agents/greedy_merge.c agents/gnn_kernels.c reward/roofline.c \
		reward/costmodel/kernels.c reward/buffers.h
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first and pinned: on these machines torch==2.13.0 is the CPU wheel; an unpinned
	# torch (pulled in by a dependency) would fetch gigabytes of CUDA packages.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[parquet]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fusiongym demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m fusiongym bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
