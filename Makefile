# The two commands: `make demo` and `make test`. Each creates .venv when
# missing, installs what it needs (idempotent: a stamp file per extra set)
# and runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
DEMO_DIR ?= demo-output

.PHONY: demo test test-long bench clean venv mutants chromium

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.stamp-sample: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[sample]'
	touch $@

$(VENV)/.stamp-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.stamp-sample

venv: $(VENV)/.stamp-test

# the main job end to end, as a scheduled run would: jobs/quickstart.toml
demo: $(VENV)/.stamp-sample
	$(BIN)/digitbatch run jobs/quickstart.toml

# tests/browser.py renders history.html and report.html in Debian's headless
# Chromium: installed here (as root, or through sudo) when missing; the tests
# that need it fail, never skip, when it is not there.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; \
	  else echo "make test needs Debian's chromium: run as root, or apt-get install -y chromium" >&2; exit 1; fi; \
	  echo "installing Debian's chromium (headless browser checks of the HTML pages)"; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 chromium \
	  || { $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=600 \
	       && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 chromium; }; }

test: $(VENV)/.stamp-test chromium
	$(BIN)/python -m pytest -m "not long" -q

test-long: $(VENV)/.stamp-test
	$(BIN)/python -m pytest -m long -q

# dask-ml is a baseline of `bench score` only, never a dependency.
bench: $(VENV)/.stamp-test
	$(BIN)/python -m pip install --quiet dask-ml
	$(BIN)/digitbatch bench ingest
	$(BIN)/digitbatch bench train
	$(BIN)/digitbatch bench score
	$(BIN)/digitbatch bench export

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info

# --- mutation testing (docs/mutation-testing.md) ------------------------------
# What is mutated and the tests run against it are one list each, in
# pyproject.toml's [tool.mutmut] (only_mutate, pytest_add_cli_args_test_selection):
# re-point them there when modules move. MUTANTS limits a run to mutant-name
# globs, e.g. make mutants MUTANTS='digitbatch.metrics* digitbatch.kernels*'.
# Fails when a module checked scores below MUTATION_MIN percent.
MUTANTS       ?=
MUTMUT_JOBS   ?= 2
MUTATION_MIN  ?= 80

$(VENV)/.stamp-mutants: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,mutants]'
	touch $@ $(VENV)/.stamp-test $(VENV)/.stamp-sample

mutants: $(VENV)/.stamp-mutants
	nice -n 5 $(BIN)/mutmut run --max-children $(MUTMUT_JOBS) $(MUTANTS)
	$(BIN)/mutmut results --all true | $(PY) tools/mutation_score.py --min $(MUTATION_MIN)
