# Raven: set up, run the lab, run the tests. Run as root on Debian (bookworm or later).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
APT_PACKAGES := iproute2 iptables wireguard-tools wireguard-go iperf3 tcpdump iputils-ping \
	procps kmod openssl python3-venv ca-certificates conntrack curl graphviz
# The image and the container tests: a Docker engine (started for them when none runs, see
# raven/lab/dockerd.py) and debootstrap for a base image made without any registry.
DOCKER_PACKAGES := docker.io debootstrap
STAMP := $(VENV)/.raven-installed

.PHONY: setup docker-setup image lab lab-down test test-unit lint clean

setup: $(STAMP)

# apt is only asked when a package is missing, so a second `make` costs nothing.
$(STAMP): pyproject.toml
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		echo "installing Debian packages: $(APT_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $(STAMP)

docker-setup:
	@if ! dpkg -s $(DOCKER_PACKAGES) >/dev/null 2>&1; then \
		echo "installing Debian packages: $(DOCKER_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DOCKER_PACKAGES) >/dev/null; \
	fi

# Builds raven:<version> (deploy/Dockerfile) on a base made here with debootstrap; prints its size.
image: setup docker-setup
	$(VENV)/bin/python -m raven.lab.dockerd run -- deploy/build-image.sh

lab: setup
	$(VENV)/bin/raven lab up

lab-down: setup
	$(VENV)/bin/raven lab down

# The unit tests run in two workers (pytest-xdist): each is in-process and on loopback ports of
# its own. The docker, lab and namespace tests share one host-wide lab and run one at a time.
test: lint docker-setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -n 2 tests/unit
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/docker tests/lab tests/netns

test-unit: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/unit

lint: setup
	$(VENV)/bin/ruff check raven agent gateway tests
	$(VENV)/bin/mypy raven agent gateway
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) *.egg-info
