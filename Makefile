# Two commands for a fresh machine:
#   make demo   - set everything up and run the whole pipeline on the bundled sample data
#   make test   - set everything up and run the test suite (what CI runs)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.slmforge-installed

.PHONY: setup system-deps demo test test-fast clean-demo

$(STAMP): pyproject.toml requirements/*.txt scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $(STAMP)

setup: $(STAMP)

system-deps:
	bash scripts/system_deps.sh

demo: setup
	$(VENV)/bin/slmforge run data/recipes/demo.yaml

# Full suite: unit tests, slow tests, the embedded Argilla server, Ray, headless Chromium.
test: system-deps setup
	$(PY) -m pytest -q

# Quick loop while developing: no slow/argilla/ray/browser tests.
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not argilla and not ray and not browser"

clean-demo:
	rm -rf workspace/demo
