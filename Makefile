# vit-course: two commands for a newcomer.
#   make lab    create .venv if missing, install the course, open JupyterLab on notebooks/
#   make test   the same set-up, then unit tests and every notebook (quick profile, offline)
# Other targets: make install, make download (fetch data + weights ahead of class),
#                make notebooks-exercise (regenerate notebook 08's student/solution versions),
#                make test-browser (notebooks 04, 05, 08 in JupyterLab + Chromium),
#                make bench, make cards (docs/METHODS.md), make clean-test.

PYTHON    ?= python3
VENV      ?= .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.vit_course_installed
TEST_STAMP:= $(VENV)/.vit_course_test_installed
LAB_ARGS  ?=
# JupyterLab refuses to run as root unless told (containers, CI); say it only when needed.
LAB_ROOT  := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

# make test runs offline and on stand-in weights, in folders of its own, so it never
# touches a classroom's real caches (data downloads are shared: they are the real data).
TEST_CACHE     := $(CURDIR)/.cache/test
TEST_TORCH_HOME:= $(TEST_CACHE)/torch-standin
TEST_ARTIFACTS := $(TEST_CACHE)/artifacts
TEST_ENV       := VIT_COURSE_PROFILE=quick TORCH_HOME=$(TEST_TORCH_HOME) \
                  VIT_COURSE_ARTIFACTS=$(TEST_ARTIFACTS) MPLBACKEND=Agg \
                  PYTHONHASHSEED=0

# the course notebooks (08 is the student version) and the exercise's solution version
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb)) $(sort $(wildcard notebooks/solutions/*.ipynb))

.PHONY: install install-test lab test unit nbtest test-browser download bench cards notebooks-exercise clean-test

$(PY):
	$(PYTHON) -m venv $(VENV)

# The course itself (what `make lab` needs) ...
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --disable-pip-version-check -e .
	@touch $(STAMP)

# ... and the test tools on top (pytest, nbval, the cross-check libraries).
$(TEST_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --disable-pip-version-check -e ".[test]"
	@touch $(TEST_STAMP) $(STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

lab: install
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(LAB_ROOT) $(LAB_ARGS)

download: install
	$(PY) -m vit_course.download --all

test: install-test
	@echo "== data: the real pizza/steak/sushi archive (VIT_COURSE_DATA_SOURCE=$${VIT_COURSE_DATA_SOURCE:-<unset: cache or internet>})"
	$(PY) -m vit_course.download --data
	@echo "== stand-in ViT-B/16 weights for offline tests in $(TEST_TORCH_HOME)"
	$(PY) -m vit_course.standin $(TEST_TORCH_HOME)
	rm -rf $(TEST_ARTIFACTS)
	$(MAKE) --no-print-directory unit nbtest

unit: install-test
	$(TEST_ENV) $(PY) -m pytest tests -q

nbtest: install-test
	cd notebooks && $(TEST_ENV) ../$(PY) -m pytest -q -p no:cacheprovider \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=900 \
	  --nbval-sanitize-with ../tests/nbval_sanitize.cfg $(patsubst notebooks/%,%,$(NOTEBOOKS))

# Notebooks 04, 05 and 08 in JupyterLab driven through Debian's chromium by Playwright
# (tests/browser/: its own server on 127.0.0.1, copies of the notebooks, stand-in weights).
test-browser: install-test
	$(PY) -m vit_course.download --data
	$(PY) -m vit_course.standin $(TEST_TORCH_HOME)
	VIT_COURSE_BROWSER_TEST=1 $(TEST_ENV) $(PY) -m pytest -q -p no:cacheprovider tests/browser

bench: install-test
	for script in benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

# docs/METHODS.md: one card per registered explanation method, measured from the code
cards: install-test
	$(PY) -m vit_course.tools.cards

notebooks-exercise: install
	$(PY) -m vit_course.grading generate notebooks/source/08_evaluation_source.ipynb

clean-test:
	rm -rf $(TEST_CACHE)
