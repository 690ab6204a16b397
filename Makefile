# Set-up is one target: a virtual environment with exactly torch==2.13.0 installed first (a
# plain `torch` requirement with nothing installed would pull several GB of CUDA packages),
# then occamgd in editable mode with its test extras.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.occamgd-installed

.PHONY: setup demo test bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/occamgd demo

test: $(STAMP)
	$(PY) -m pytest -q

# The standard CPU set; prune_step.py's default (100 M weights too, four criteria) takes minutes
# and about 2 GB on its own, so here it times the target's size and the two magnitude criteria.
bench: $(STAMP)
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/prune_step.py --weights 10 --criteria layerwise global
	$(PY) benchmarks/guard_cost.py
	$(PY) benchmarks/speed_train.py
	$(PY) benchmarks/compact_latency.py
