# leaderrun developer tasks. Every target works on a fresh Debian bookworm machine (as root,
# or with sudo) and is idempotent: system packages are installed only when missing, and the
# virtualenv is rebuilt only when pyproject.toml changes.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMTOOL := $(BIN)/promtool
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps system-deps test lint chaos bench demo clean

deps: system-deps $(STAMP) $(PROMTOOL)

# etcd and ZooKeeper are the real servers the tests start on loopback ports of their own; the
# Debian packages would also start system services on the default ports (2379, 2181), so a
# temporary policy-rc.d forbids that during the install. Nothing here uses those ports.
system-deps:
	@missing=""; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	command -v etcdctl >/dev/null || missing="$$missing etcd-client"; \
	[ -e /usr/share/java/zookeeper.jar ] || missing="$$missing zookeeper"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "installing:$$missing"; \
	policy=/usr/sbin/policy-rc.d; \
	if [ ! -e $$policy ]; then \
		trap "$(SUDO) rm -f $$policy" EXIT; \
		printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee $$policy >/dev/null; \
		$(SUDO) chmod +x $$policy; \
	fi; \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q; \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing

# promtool checks the /metrics page in a test; Debian ships it only inside the (large)
# prometheus server package, so it is extracted from that package into the venv.
$(PROMTOOL): | $(STAMP)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; cd "$$tmp"; \
	apt-get download -q prometheus >/dev/null 2>&1 || { \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null; \
		apt-get download -q prometheus >/dev/null; }; \
	dpkg-deb -x prometheus_*.deb root; \
	install -m 755 root/usr/bin/promtool "$(CURDIR)/$@"

$(STAMP): pyproject.toml
	@$(BIN)/python -c 'import sys' 2>/dev/null || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

lint: deps
	$(BIN)/ruff check leaderrun tests
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -m "not chaos and not bench" $(PYTEST_ARGS)

chaos: deps
	$(BIN)/pytest -m chaos $(PYTEST_ARGS)

# Byte-compiled first, as an installed package is (pip compiles wheels at install): otherwise
# every leaderrun start of the benchmark would compile its own source again.
bench: deps
	$(BIN)/python -m compileall -q leaderrun
	$(BIN)/pytest -m bench -s $(PYTEST_ARGS)

demo: deps
	bash examples/demo.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
