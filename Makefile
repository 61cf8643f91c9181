# Firehose: `make demo` (synthetic ImageNet -> shards -> train -> summary) and `make test`.
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0
DEMO  ?= data/demo

.PHONY: setup demo test bench lint clean

setup: $(VENV)/.installed

# torch first: a bare `torch` requirement would otherwise pull a multi-GB CUDA build on CPU machines.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,plot]"
	touch $@

$(DEMO)/raw/.done: | setup
	$(PY) tools/make_synthetic_imagenet.py --out $(DEMO)/raw --classes 10 --train-per-class 260 \
		--val-per-class 50 --min-side 80 --max-side 160 --force
	touch $@

$(DEMO)/shards/_info.json: $(DEMO)/raw/.done
	$(PY) tools/shard_imagenet.py --src $(DEMO)/raw --out $(DEMO)/shards --samples-per-shard 256

demo: $(DEMO)/shards/_info.json
	rm -rf runs/demo  # a fresh run each time (resume: auto would find the last one finished)
	$(PY) -m train --config configs/demo.yaml data.path=$(DEMO)/shards run_dir=runs/demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks --data $(DEMO)/shards

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs data/demo .pytest_cache
