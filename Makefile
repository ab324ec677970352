# Two entry points: `make dev` and `make test`. Both create and use .venv in this folder.
# `make tools` installs the tools that are not Python wheels (CI runs it before `make test`;
# without them, the tests that need them skip and name the missing tool).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Tools that are not Python wheels, built or installed by `make tools`.
TOOLS  := $(CURDIR)/.tools
ACTIONLINT_VERSION := v1.7.12

.PHONY: dev test bench chaos clean tools dashboards k8s k8s-check helm-sync lint

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

dev: $(STAMP)
	$(VENV)/bin/taskstream dev

test: $(STAMP)
	PATH="$(TOOLS)/go/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

dashboards: $(STAMP)
	$(PY) monitoring/dashboards.py

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

# Tools the tests use when present (each test that needs a missing one skips and names it):
# nginx, openssl, prometheus + promtool and amtool from Debian packages, actionlint built from
# the Go module proxy.
# Installs what this machine can; says what it could not.
tools:
	@if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$sudo" != none ]; then \
	  missing=""; \
	  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	  command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	  { command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || missing="$$missing prometheus"; \
	  command -v amtool >/dev/null 2>&1 || missing="$$missing prometheus-alertmanager"; \
	  if [ -n "$$missing" ]; then \
	    $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  fi; \
	else echo "make tools: no apt-get or no root: nginx, openssl, promtool, amtool not installed"; fi
	@if [ -x "$(TOOLS)/go/bin/actionlint" ]; then :; \
	elif command -v go >/dev/null 2>&1; then \
	  GOPATH="$(TOOLS)/go" GOFLAGS=-modcacherw go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION); \
	else echo "make tools: no go toolchain: actionlint not installed"; fi

# Plain manifests for `kubectl apply -f k8s/`: the chart rendered with the production values.
k8s: $(STAMP)
	$(PY) helm/render.py --environment production --out k8s

k8s-check: $(STAMP)
	$(PY) helm/render.py --environment production --check k8s

# The chart's PrometheusRule carries the same rules as monitoring/ (the source of truth).
helm-sync:
	cp monitoring/alert-rules.yml helm/taskstream/files/alert-rules.yml

# Lint of the deployment files (also run, with more, by the tests under tests/deploy/).
lint: $(STAMP)
	$(VENV)/bin/hadolint Dockerfile
	$(PY) -c 'import compose, pathlib, subprocess, sys; sys.exit(subprocess.call([str(pathlib.Path(compose.__file__).parent / "docker-compose"), "-f", "docker-compose.staging.yml", "--env-file", ".env.staging.example", "config", "-q"]))'
	PATH="$(TOOLS)/go/bin:$$PATH" actionlint
	$(MAKE) --no-print-directory k8s-check

# The fault suite: relay kill -9 (50 times), a broker and a PostgreSQL restart, a Redis outage,
# under HTTP write load; prints one JSON line of counts, fails if a check failed.
chaos: $(STAMP)
	$(PY) -m chaos.suite

clean:
	rm -rf $(VENV) .taskstream
