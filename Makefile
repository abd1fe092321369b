# Two commands do everything: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help demo demo-server test test-live lint bench bench-large bench-rest bytecode clean
.DEFAULT_GOAL := help

help:
	@echo "make demo   - sweep the bundled demo population and print the summary"
	@echo "make test   - run the whole test suite (unit, golden, integration)"
	@echo "make lint   - ruff and mypy --strict"
	@echo "make bench  - folder sweeps of 1k and 10k generated patients vs the orjson floor (~4 min)"
	@echo "make bench-large - the same at 10k and 100k patients (14 GB of NDJSON under bench/data)"
	@echo "make bench-rest - REST sweeps vs their replayed requests and fhirpy, Synthea 615 and 2k patients"
	@echo "make demo-server - the demo on a local FHIR server: load, sweep (source+sink), list ResearchSubjects"
	@echo "make test-live   - FHIR_BASE_URL=<base> make test-live: the suite against a live server"

# The venv is rebuilt when pyproject.toml changes (a stale venv is as bad as none).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The package's bytecode, written here once: an editable install has none, and where
# PYTHONDONTWRITEBYTECODE is set (containers often set it) every start would compile the whole
# package again, 0.13 s of an empty sweep's 0.66 s. Only modules changed since are compiled.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q adapter

demo: bytecode
	$(BIN)/trial-adapter sweep --trial hcc-ablation-lenvatinib-pd1 --source fixtures/demo \
		--as-of 2026-06-15 --out out/demo

# Starts the local FHIR server the integration tests need, runs the suite, stops the server.
test: $(STAMP)
	bash tools/run-tests.sh

demo-server: $(STAMP)
	bash tools/demo-server.sh

test-live: $(STAMP)
	bash tools/test-live.sh

bench: bytecode
	$(BIN)/python bench/bench_files.py --sizes 1000,10000

bench-large: bytecode
	$(BIN)/python bench/bench_files.py --sizes 10000,100000 --suffix=-large

# fhirpy, the peer, lives in a venv of its own so that it never enters the adapter's; pinned to
# the version ../shared/PERFORMANCE.md measured, so that runs compare.
bench-rest: bytecode
	test -f bench/.venv-fhirpy/.installed || ($(PYTHON) -m venv bench/.venv-fhirpy && \
		bench/.venv-fhirpy/bin/python -m pip install --quiet fhirpy==2.3.1 && \
		touch bench/.venv-fhirpy/.installed)
	$(BIN)/python bench/bench_rest.py

lint: $(STAMP)
	$(BIN)/ruff check adapter tests
	$(BIN)/ruff format --check adapter tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .venv-fhir .fhir-server .fhir-server-smart out .pytest_cache .mypy_cache .ruff_cache bench/data bench/.venv-fhirpy
