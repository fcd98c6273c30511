# Two entry points, each doing all of its own set-up on a fresh machine:
#   make demo   -> builds .venv, installs everything, runs the offline demo (theworld demo)
#   make test   -> builds .venv, installs everything, runs the linters (make lint) and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/theworld demo --out demo_out

# ruff; transformers' structure linter (mlinter) on the remote-code files shipped with every checkpoint: the three
# with standard names directly, the other three as modeling files (tools/lint_remote_code.py); any violation fails.
REMOTE_CODE := $(addprefix src/theworld/,configuration_theworld.py modeling_theworld.py processing_theworld.py)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/mlinter --no-progress --no-cache $(REMOTE_CODE)
	$(BIN)/python tools/lint_remote_code.py

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo_out
