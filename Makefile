# Training Doctor: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test eval bench bench-instructions gpu-check lint docs browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,all]"
	touch $(STAMP)

install: $(STAMP)

## Record document 000's failing RNN and its fixed twin, analyze both, write HTML reports.
demo: $(STAMP)
	$(PY) examples/rnn_l2_demo.py runs/demo
	$(VENV)/bin/doctor analyze runs/demo/rnn-l2.log runs/demo/rnn-l2-exempt.log -o reports/demo
	$(VENV)/bin/doctor compare runs/demo/rnn-l2.log runs/demo/rnn-l2-exempt.log -o reports/demo/compare.html
	@echo "open reports/demo/index.html and reports/demo/compare.html"

## The test suite (the browser test needs Debian's chromium: make browser).
test: $(STAMP)
	$(PY) -m pytest -q

## Per-rule precision and recall over the scenario zoo.
eval: $(STAMP)
	$(PY) -m tests.zoo

## Recording overhead (full-size and launch-bound tiny workloads) and analysis speed; figures go in BENCHMARKS.md.
bench: $(STAMP)
	$(PY) bench/overhead.py
	$(PY) bench/dispatch.py
	$(PY) bench/analysis.py

## The recorder's CPU cost per step as callgrind instruction counts, free of clock noise (needs valgrind; ~10 min).
bench-instructions: $(STAMP)
	$(PY) bench/instructions.py

## On the device tool's CUDA machine, with its own python3 (it holds a CUDA torch; nothing can be installed
## there): the no-sync test, the overhead benchmark and the launch-bound benchmark under CUDA, about 5 minutes.
## Needs no .venv.
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
	PYTHONPATH=. $(GPU_PYTHON) -m pytest -q --noconftest -p no:cacheprovider tests/test_recorder.py -k cuda
	PYTHONPATH=. PYTHONUNBUFFERED=1 $(GPU_PYTHON) bench/overhead.py --device cuda --blocks 6 --steps 20
	PYTHONPATH=. PYTHONUNBUFFERED=1 $(GPU_PYTHON) bench/dispatch.py --device cuda --blocks 10

lint: $(STAMP)
	$(VENV)/bin/ruff check doctor rules tests bench examples

docs: $(STAMP)
	$(PY) -m doctor.explain > docs/rules.md

## Debian's chromium for the headless-browser report test (needs root).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

clean:
	rm -rf $(VENV) runs reports/demo test-artifacts .pytest_cache
