# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A local copy of the QTIM metadata + FreeSurfer tables; without one, the demo downloads them.
QTIM_ROOT ?= $(abspath $(wildcard ../shared/data/qtim))
QTIM_ARG := $(if $(QTIM_ROOT),data.root=$(abspath $(QTIM_ROOT)),)
export QTIM_ROOT

.PHONY: setup browser prometheus demo test test-fast lint format docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/modelcycle pipeline twins $(QTIM_ARG)

# Debian's Chromium for the web page test; Playwright drives it and never downloads a browser.
CHROMIUM := /usr/bin/chromium
SUDO = $(if $(filter 0,$(shell id -u)),,sudo)

browser:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update && \
		$(SUDO) apt-get install -y --no-install-recommends chromium; }

# Debian's Prometheus (prometheus + promtool) for the alert-rule tests and the real-Prometheus
# test. Installed only when either program is missing; its service is never started here.
prometheus:
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then \
		echo "make prometheus: promtool or prometheus missing; installing Debian's prometheus"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; \
	fi
	@promtool --version >/dev/null 2>&1 || { echo "make prometheus: promtool does not run"; exit 1; }
	@prometheus --version >/dev/null 2>&1 || { echo "make prometheus: prometheus does not run"; exit 1; }

# The whole suite, then the linters (ruff, ruff format --check, mypy); both always run, and
# either one failing fails the target.
test: $(STAMP) browser prometheus
	$(BIN)/pytest; tests=$$?; $(MAKE) --no-print-directory lint || exit 1; exit $$tests

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .modelcycle .pytest_cache .mypy_cache .ruff_cache
