# visage-ml — the README's two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VISAGE := $(VENV)/bin/visage
STAMP := $(VENV)/.visage-installed
# The environment's Jupyter saves notebooks without outputs (visage_ml/app/jupyter.py).
JUPYTER_CFG := $(VENV)/etc/jupyter/jupyter_server_config.json

# No internet on the target machines: keep every tool from phoning home.
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
# Some machines set PYTHONDONTWRITEBYTECODE; the Makefile's commands write byte-code all the same
# (once, for what setup left out), or every process would compile its modules again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup demo test test-all lint lab ui bench

setup: $(STAMP) $(JUPYTER_CFG)

# Re-installs only when pyproject.toml changes, so a second `make setup` returns at once.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Byte-code is compiled once below, on every core (pip compiles file by file, on one).
	$(PY) -m pip install -q --no-compile -e '.[dev]'
	# facenet-pytorch pins torch<2.3 and numpy<2 in its metadata; its code runs on ours.
	$(PY) -m pip install -q --no-compile --no-deps facenet-pytorch==2.6.0
	# Everything but the packages' own test suites and the installers (29 s on 2 cores, not 52
	# s): so `dvc repro` run outside make, where PYTHONDONTWRITEBYTECODE may be set, does not
	# compile torch in every stage. Files that do not compile (templates some packages ship)
	# are skipped, as pip skips them.
	-$(PY) -m compileall -q -j 0 -x '/(tests?|pip|setuptools)/' $(VENV)/lib >/dev/null 2>&1
	@touch $(STAMP)

$(JUPYTER_CFG): jupyter-config/visage-ml.json | $(STAMP)
	install -D -m 644 $< $@

demo: setup
	$(VISAGE) demo

# The suite in TEST_WORKERS processes (pytest-xdist): two on the 2 cores CI has (a third of the
# time off, as much of the suite waits on servers and subprocesses). Each process starts servers
# of its own for the session (a stack: PostgreSQL, SeaweedFS, MLflow); the tests of the shared
# tiny pipeline run in one of them, which builds it once (tests/conftest.py). `TEST_WORKERS=0`
# runs everything in this process.
TEST_WORKERS ?= 2
PYTEST_XDIST := -n $(TEST_WORKERS) --dist loadgroup

test: lint
	$(VENV)/bin/pytest $(PYTEST_XDIST)

# Everything but the GPU tests (`pytest -m gpu` on a CUDA machine), slow ones included.
test-all: lint
	$(VENV)/bin/pytest $(PYTEST_XDIST) -m "not gpu"

# ruff, then the architecture: layers import only from the layers below (docs/architecture.md).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# Jupyter refuses to run as root without --allow-root (containers often run as root).
lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks \
		--ContentsManager.pre_save_hook=visage_ml.app.jupyter.strip_before_save \
		$(if $(filter 0,$(shell id -u)),--allow-root)

ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root ./mlruns --host 127.0.0.1 --port 5000

bench: setup
	@for b in benchmarks/bench_*.py; do echo "# $$b"; $(PY) $$b; done
