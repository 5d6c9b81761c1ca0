# The two commands: `make demo` and `make test`. Each creates .venv when
# missing, installs what it needs (idempotent: a stamp file per extra set)
# and runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
DEMO_DIR ?= demo-output

.PHONY: demo test test-long bench clean venv mutants

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

test: $(VENV)/.stamp-test
	$(BIN)/python -m pytest -m "not long" -q

test-long: $(VENV)/.stamp-test
	$(BIN)/python -m pytest -m long -q

# dask-ml is a baseline of `bench score` only, never a dependency.
bench: $(VENV)/.stamp-test
	$(BIN)/python -m pip install --quiet dask-ml
	$(BIN)/digitbatch bench ingest
	$(BIN)/digitbatch bench train
	$(BIN)/digitbatch bench score

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info

# --- mutation testing (docs/mutation-testing.md) ------------------------------
# The modules carrying the promises, and the tests that cover them. After the
# scoring refactor: digitbatch/scoring/output.py digitbatch/scoring/record.py
# in place of predictions.py and score.py.
MUTATE_MODULES ?= digitbatch/modelio.py digitbatch/metrics.py digitbatch/kernels.py \
                  digitbatch/predictions.py digitbatch/score.py digitbatch/sources/archive.py
MUTATE_TESTS   ?= tests/test_modelio.py tests/test_metrics.py tests/test_kernels.py tests/test_kernels_edges.py \
                  tests/test_scoring_output.py tests/test_scoring_record.py \
                  tests/faults/test_model_safety.py tests/test_score_archive.py \
                  tests/test_sources_images.py
MUTMUT_JOBS    ?= 2

$(VENV)/.stamp-mutants: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,mutants]'
	touch $@ $(VENV)/.stamp-test $(VENV)/.stamp-sample

mutants: $(VENV)/.stamp-mutants
	$(PY) tools/mutants.py --modules "$(MUTATE_MODULES)" --tests "$(MUTATE_TESTS)" \
	    --jobs $(MUTMUT_JOBS)
