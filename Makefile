# Two entry points: `make dev` and `make test`. Both create and use .venv in this folder.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: dev test bench chaos clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

dev: $(STAMP)
	$(VENV)/bin/taskstream dev

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

# The fault suite: relay kill -9 (50 times), a broker and a PostgreSQL restart, a Redis outage,
# under HTTP write load; prints one JSON line of counts, fails if a check failed.
chaos: $(STAMP)
	$(PY) -m chaos.suite

clean:
	rm -rf $(VENV) .taskstream
