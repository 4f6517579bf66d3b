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

LEADERBOARD_RESULTS ?= results/leaderboard
DEFAULT_CONFIG := configs/default-grid.yaml

.PHONY: demo test install leaderboard leaderboard-check reproduce-sample
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

# The default grid (benchmark.grid.defaults.DEFAULT_GRID: the baselines and thesis-sld, cub100,
# frozen, bits 12/24/32/48, seeds 0-4, the tuned hyperparameters of $(DEFAULT_CONFIG); runs
# already in $(LEADERBOARD_RESULTS) are reused), then every file in leaderboards/. Failed
# runs are recorded; the leaderboards are still regenerated and make exits non-zero.
leaderboard: $(STAMP)
	status=0; $(PY) -m benchmark run --methods "$$($(PY) -m benchmark list --default-grid --names)" \
		--dataset cub100 --regime frozen --bits 12,24,32,48 --seeds 0,1,2,3,4 \
		--config $(DEFAULT_CONFIG) --out $(LEADERBOARD_RESULTS) || status=$$?; \
	test $$status -le 1 && $(PY) -m benchmark leaderboard --results $(LEADERBOARD_RESULTS) \
		--out leaderboards && exit $$status

# What CI runs: regenerate leaderboards/ from the committed records and compare bytes.
leaderboard-check: $(STAMP)
	$(PY) -m benchmark leaderboard --records leaderboards/records.jsonl --out leaderboards --check

# What CI runs after the tests: re-run a cheap sample of the committed cub100 records (the
# closed-form lsh and itq and the trained dsh, 12 bits, seed 0) with the records' thread
# count and compare (README "Reproduce a number": dsh's bound is wider on hardware other than
# the records'); exit 1 when a number no longer comes out of the code.
reproduce-sample: $(STAMP)
	$(PY) -m benchmark reproduce --records leaderboards/records.jsonl --methods lsh,itq,dsh \
		--bits 12 --seeds 0
