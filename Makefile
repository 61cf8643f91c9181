# Firehose: `make demo` (synthetic ImageNet -> shards -> train -> summary), `make test` (the fast
# tests) and `make test-all` (every test: what CI runs).
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0
DEMO  ?= data/demo
DEMO_RUN ?= runs/demo
# More key=value overrides for the demo's training run.
DEMO_ARGS ?=
# Empty: run in the environment PY is in, as it is (tests/test_train_demo.py runs the demo so).
SETUP ?= setup

.PHONY: setup demo test test-all coverage bench lint clean

setup: $(VENV)/.installed

# torch first: a bare `torch` requirement would otherwise pull a multi-GB CUDA build on CPU machines.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,plot]"
	touch $@

$(DEMO)/raw/.done: | $(SETUP)
	$(PY) tools/make_synthetic_imagenet.py --out $(DEMO)/raw --classes 10 --train-per-class 260 \
		--val-per-class 50 --min-side 80 --max-side 160 --force
	touch $@

$(DEMO)/shards/_info.json: $(DEMO)/raw/.done
	$(PY) tools/shard_imagenet.py --src $(DEMO)/raw --out $(DEMO)/shards --samples-per-shard 256

demo: $(DEMO)/shards/_info.json
	rm -rf $(DEMO_RUN)  # a fresh run each time (resume: auto would find the last one finished)
	$(PY) -m train --config configs/demo.yaml data.path=$(DEMO)/shards run_dir=$(DEMO_RUN) $(DEMO_ARGS)

# OpenMP threads that sleep while they wait instead of spinning: the test process, DALI's threads
# and the trainer subprocesses share the cores, and spinning threads on busy cores made
# compute-heavy tests 2-3x slower (README "Tests").
PYTEST := OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q

# The fast tier: everything but the tests marked slow (trainer processes, torchrun, the demo, the
# GPU check's dry run) or cluster (SLURM jobs); every project module still runs. README "Tests" has the times of both
# tiers and the fast tier's coverage.
test: setup
	$(PYTEST) -m "not slow and not cluster" --durations=15

test-all: setup
	$(PYTEST) --durations=15

# Per-module line coverage of the fast tier (the table in README "Tests").
coverage: setup
	$(PYTEST) -m "not slow and not cluster" --cov --cov-report=term

bench: setup
	$(PY) -m benchmarks --data $(DEMO)/shards

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs data/demo .pytest_cache .coverage .coverage.*
