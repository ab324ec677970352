# Two entry points: `make dev` and `make test`. Both create and use .venv in this folder.
# `make tools` installs the tools that are not Python wheels (CI runs it before `make test`;
# without them, the tests that need them skip and name the missing tool).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT     := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
HAVE     = command -v $(1) >/dev/null 2>&1
# $(call apt_install,PACKAGES): install Debian packages, or say what to install where apt-get is missing.
apt_install = { $(call HAVE,apt-get) || { echo "make tools: no apt-get here; install $(1) yourself" >&2; exit 1; }; $(APT) update -qq && $(APT) install -y --no-install-recommends $(1); }

.PHONY: dev test bench clean tools dashboards

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

tools:  # one line per group of tools: installed only when one of them is missing
	# monitoring: prometheus and promtool (Debian prometheus), amtool (Debian prometheus-alertmanager)
	$(call HAVE,prometheus) && $(call HAVE,promtool) && $(call HAVE,amtool) || $(call apt_install,prometheus prometheus-alertmanager)

dashboards: $(STAMP)
	$(PY) monitoring/dashboards.py

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .taskstream
