# pgsight: `make demo` and `make test` work on a fresh machine (CPU PyTorch, embedded PostgreSQL).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-containers faults bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned (constraints.txt): an open range would pull a multi-GB CUDA build
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PIP) install -q -c constraints.txt torch==2.13.0
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PIP) install -q -c constraints.txt -e '.[models,test]' ruff
	touch $(STAMP)

demo: venv
	$(VENV)/bin/pgsight demo

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# the testcontainers path and the compose stack under podman (images built here; docs/deploy.md)
test-containers: venv
	containers/test-containers.sh

faults: venv
	$(PY) -m pytest tests/faults $(PYTEST_ARGS)

bench: venv
	$(PY) bench/run_all.py

# ruff, then mypy over pgsight/, db/ and worker/ ([tool.mypy] in pyproject.toml; .ci/typecheck.py)
lint: venv
	$(VENV)/bin/ruff check .
	$(PY) .ci/typecheck.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build/typecheck demo-out bench/out
