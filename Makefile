# Everything the project needs on a fresh Debian machine, as root.
#   make demo   installs everything, then runs the main job
#   make test   installs everything, then runs lint, types and the test suite

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The environment's interpreter: Debian's own (python3-venv below brings it).  An engine
# starts hcsoci-runc 3-4 times per container, and Debian's optimised build starts faster.
VENV_PYTHON ?= /usr/bin/python3
# Debian packages the project uses: the OCI runtimes, the default image's busybox,
# netlink-era networking tools for baselines, QEMU and the guest kernel, disk tools,
# gcc + libc6-dev for the static syscall probe of tests/test_seccomp.py, and the
# engines that drive hcsoci-runc in tests/test_engines.py (containerd + ctr, docker.io,
# podman + conmon; their services are never started by the install: see system-packages).
DEB_PACKAGES := runc crun busybox-static iproute2 nftables kmod cpio e2fsprogs \
	qemu-system-x86 linux-image-amd64 python3-venv procps util-linux gcc libc6-dev \
	containerd docker.io podman conmon
# Where engines find the runtime by name (docker --add-runtime, podman --runtime, ctr --runc-binary).
RUNTIME_LINK ?= /usr/local/bin/hcsoci-runc

.PHONY: FORCE all install system-packages venv runtime uvm-assets demo test lint typecheck pytest bench clean

all: demo

install: system-packages venv runtime uvm-assets

system-packages:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
			trap 'rm -f /usr/sbin/policy-rc.d' EXIT; \
		fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# An environment made with another interpreter than VENV_PYTHON (changed, or from before) is
# made anew, so its scripts never keep the old one; the stamp makes .installed follow.
$(VENV)/.interpreter: FORCE | system-packages
	@wanted=$$(readlink -f $(VENV_PYTHON)); made=$$(readlink -f $(VENV)/bin/python); \
	if [ -e $(VENV)/bin/python ] && [ "$$made" != "$$wanted" ]; then \
		echo "$(VENV) was made with $$made, not $$wanted: making it anew"; rm -rf $(VENV); \
	fi; \
	if [ ! -e $@ ]; then mkdir -p $(VENV) && touch $@; fi

$(VENV)/.installed: pyproject.toml $(VENV)/.interpreter | system-packages
	$(VENV_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# hcsoci-runc on PATH for the engines, and the package byte-compiled: an engine starts the
# runtime 3-4 times per container, and each start would otherwise compile every module it
# imports when PYTHONDONTWRITEBYTECODE is set (or the tree is not writable).  The scripts are
# `python -IS` launchers (hcsoci.runtime_cli.launcher): no site processing, and nothing of
# the engine's PYTHON* environment.
runtime: venv
	$(PY) -m compileall -q src > /dev/null
	$(PY) -m hcsoci.runtime_cli.launcher $(VENV)/bin/hcsoci-runc $(VENV)/bin/hcsoci-runc-vm
	ln -sfn $(abspath $(VENV))/bin/hcsoci-runc $(RUNTIME_LINK)
	ln -sfn $(abspath $(VENV))/bin/hcsoci-runc-vm $(RUNTIME_LINK)-vm

# The utility VM's kernel + initramfs: cheap when the cached build is current.
uvm-assets: system-packages venv
	$(VENV)/bin/hcsoci uvm build-assets

demo: install
	$(PY) -m hcsoci.demo
	$(VENV)/bin/hcsoci run --rm -- sh -c 'echo "hello from $$(hostname), a runc container on the busybox image"; id'
	$(VENV)/bin/hcsoci run --isolation vm -- sh -c 'echo "hello from a container inside a utility VM (guest kernel $$(uname -r))"'

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: venv
	$(VENV)/bin/mypy

pytest: install
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) build src/*.egg-info

FORCE:
