# Every target that needs Python goes through the project's own virtual environment, which is
# created and filled on first use, so a fresh clone needs nothing done by hand.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Ray on this kind of machine must bind to loopback; set before Ray starts.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_USAGE_STATS_ENABLED ?= 0
export OMP_NUM_THREADS ?= 1

.PHONY: venv demo test test-unit test-integration bench bench-quick lint clean mlflow-ui

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/eclm demo

# Unit tests (torch and pure Python, no Ray) run on $(TEST_WORKERS) pytest workers, each test
# module on one worker; integration tests (real Ray clusters, MLflow, subprocesses) run after them,
# also on $(TEST_WORKERS) workers a module each: every module starts its own local Ray (or
# cluster_utils.Cluster) on free ports, so two run side by side. pytest exits 5 when it collected
# no tests: that is a failure, not a pass.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider --durations=10

test: $(STAMP)
	$(PYTEST) tests/unit -n $(TEST_WORKERS) --dist loadfile; u=$$?; \
	$(PYTEST) tests/integration -n $(TEST_WORKERS) --dist loadfile; i=$$?; \
	if [ $$u -eq 5 ] || [ $$i -eq 5 ]; then echo "make test: no tests collected" >&2; exit 1; fi; \
	echo "make test: unit exit $$u, integration exit $$i"; [ $$u -eq 0 ] && [ $$i -eq 0 ]

test-unit: $(STAMP)
	$(PYTEST) tests/unit -n $(TEST_WORKERS) --dist loadfile

test-integration: $(STAMP)
	$(PYTEST) tests/integration -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --mode full

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --mode quick --out benchmarks/results/quick --docs docs/benchmarks-quick.md

lint: $(STAMP)
	$(BIN)/ruff check eclm tests benchmarks

mlflow-ui: $(STAMP)
	$(BIN)/eclm ui --workdir .

clean:
	rm -rf $(VENV) build *.egg-info
