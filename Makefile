# embedpipe: `make demo` runs the pipeline on the bundled sample, `make test` runs the tests.
# Both create .venv and install the project on first use, with every extra, at the exact
# versions of constraints.txt (torch as the CPU wheel).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install demo test test-fast lint format bench clean check-system gpu-tables

check-system:
	@command -v java >/dev/null 2>&1 || [ -n "$$JAVA_HOME" ] || { \
	  echo "error: Spark needs Java 17 or newer and none was found."; \
	  echo "       Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless (or set JAVA_HOME)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { \
	  echo "error: Python 3.10 or newer is needed ($(PYTHON) is older)"; exit 1; }

$(STAMP): pyproject.toml constraints.txt | check-system
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e '.[test]'
	@# Bytecode once, in parallel, at install: with PYTHONDONTWRITEBYTECODE=1 (common in
	@# containers) every Spark worker, torchrun rank and CLI call would otherwise compile
	@# torch, pyarrow, pandas and the package from source on each start.
	$(BIN)/python -m compileall -q -j 0 src
	@# Some packages ship files that are not Python 3 (templates, old tests): not an error.
	-$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null
	@# Spark's classes as a Java class-data-sharing archive (in ~/.cache/embedpipe; README):
	@# local sessions start sooner. Without it they start as before, so a failure only warns.
	@$(BIN)/python -m embedpipe.corpus.spark.class_archive >/dev/null 2>&1 || \
	  echo "warning: the Spark class archive was not built; sessions start without it"
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/embedpipe run --config configs/sample.toml

# Three pytest workers: most of the suite waits on process start-up (JVMs, torchrun ranks,
# Prefect servers), which overlaps well even on two cores (bench figures: README, Testing).
TEST_WORKERS ?= 3

test: install
	$(BIN)/pytest -n $(TEST_WORKERS)

test-fast: install
	$(BIN)/pytest -n $(TEST_WORKERS) -m "not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# The tables bench/gpu_check.sh reads on a GPU machine without Spark (carry this folder there).
gpu-tables: install
	$(BIN)/embedpipe prepare --all --config configs/sample.toml --set workdir=bench/out/gpu-tables

clean:
	rm -rf work artefacts spark-warehouse .pytest_cache
