# Two set-up commands: `make demo` and `make test`. Both build their own virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/nemo-wandb-hook: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/nemo-wandb-hook
	$(BIN)/python -m nemo_wandb_hook demo

test: $(BIN)/nemo-wandb-hook
	$(BIN)/ruff check nemo_wandb_hook tests bench
	$(BIN)/python -m pytest

lint: $(BIN)/nemo-wandb-hook
	$(BIN)/ruff check nemo_wandb_hook tests bench

bench: $(BIN)/nemo-wandb-hook
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
