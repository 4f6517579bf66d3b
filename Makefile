# The two set-up commands (README): `make demo` and `make test`. Both create .venv and
# install the pinned dependencies first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Data root: BENCHMARK_DATA_ROOT if set, else ../shared/datasets when that folder exists.
BENCHMARK_DATA_ROOT ?= $(if $(wildcard ../shared/datasets),$(abspath ../shared/datasets),)
export BENCHMARK_DATA_ROOT
RESULTS ?= results/demo

.PHONY: demo test install leaderboard
install: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m benchmark run --methods dsh,lsh,itq --dataset cub100 --bits 12,24,32,48 \
		--seeds 0 --out $(RESULTS)
	$(PY) -m benchmark leaderboard --results $(RESULTS) --out $(RESULTS)/leaderboards --print

test: $(STAMP)
	$(PY) -m pytest -q tests
