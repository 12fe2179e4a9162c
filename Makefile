# `make test` and `make demo` are the two commands of the README; both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHAKESPEARE := data/tinyshakespeare/input.txt

.PHONY: test demo lint format venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,torch,wandb]'
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# One pytest worker per CPU, at most four: a cold run is mostly XLA compiling, which leaves a
# core idle (8:28 against 12:54 serial on a 2-core CI box). Whole files per worker: a module's
# shared fixture (a trained run, a lowering probe, a finished sweep) is then built once, not
# once on every worker that gets one of its tests.
test: lint
	$(BIN)/python -m pytest -q -n logical --maxprocesses=4 --dist loadfile --durations=15

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Prepare Tiny Shakespeare (a local copy at $(SHAKESPEARE) if present, else downloaded),
# train nanoGPT's CPU recipe, print a sample. A demo stopped with Ctrl-C saves a checkpoint, and
# `make demo` again resumes it (a finished one is sampled again); `rm -rf runs/demo` starts over.
demo: $(STAMP)
	$(BIN)/minigpt prepare $(if $(wildcard $(SHAKESPEARE)),--input $(SHAKESPEARE)) --data_dir data/shakespeare_char
	MINIGPT_RESUME_COMMAND="make demo" $(BIN)/minigpt train --config configs/shakespeare_char.py:cpu --workdir runs/demo
	$(BIN)/minigpt sample --workdir runs/demo --prompt "O God, O God!" --max_new_tokens 500 --temperature 1.0 --top_k 10 --seed 0

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
