# Two commands a user needs: `make run` (the default pipeline) and `make test` (the test suite).
# Both create .venv and install the project on first use, and reinstall when pyproject.toml or the lock changes.
# The interpreter: PYTHON if given, else the newest of python3.13, python3.12, python3.11 and python3 that is
# a version the pinned dependencies ship wheels for (pyproject.toml's requires-python; checked by
# scripts/check_python_versions.py).
# The environment is the lock of that Python, requirements/py3.X.txt: every package, pinned, with its hashes
# (docs/environments.md). `make lock` writes the three locks from pyproject.toml.
SUPPORTED := 3.11 3.12 3.13
PYTHON ?= $(shell sh scripts/find_python.sh $(SUPPORTED))
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= 2
# the Python of the environment: the existing .venv's, else the one that will create it
PY_VERSION := $(shell p=$(BIN)/python; [ -x $$p ] || p="$(PYTHON)"; $$p -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
LOCK   := requirements/py$(PY_VERSION).txt
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) 2>/dev/null | cksum | cut -d' ' -f1)
PIP_VERSION := 26.3
# the lock's tool and target: uv (docs/environments.md says why), Linux x86-64 (glibc >= 2.28)
UV_VERSION := 0.13.8
UV := .tools/uv-$(UV_VERSION)/bin/uv
LOCK_PLATFORM := x86_64-manylinux_2_28
# the only packages PyPI has no wheel of (pure Python, built at install; scripts/check_python_versions.py checks
# they build into py3-none-any wheels): everything else in a lock is a wheel for its Python and platform. Without
# antlr4-python3-runtime here the wheels-only resolution falls back to a pre-release of hydra-core (dvc's); no lock
# holds a pre-release (--prerelease disallow)
LOCK_SDISTS := antlr4-python3-runtime baycomp connection-pool
# extra uv arguments, e.g. `make lock LOCK_FLAGS=--upgrade` (newest versions of every unpinned package;
# without it a re-lock keeps each locked version that still fits)
LOCK_FLAGS ?=
# the rules call `python -m vlprompt`: make the project's environment the one on PATH
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install lock run test lint system-deps clean-results pull examples

$(STAMP): pyproject.toml $(LOCK)
	@if [ ! -x $(BIN)/python ]; then \
	  if [ -z "$(PYTHON)" ]; then echo "make: no Python $(SUPPORTED) found (python3.13, python3.12, python3.11, python3); install one or pass PYTHON=/path/to/python" >&2; exit 1; fi; \
	  echo "make: creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"; \
	  $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install --quiet pip==$(PIP_VERSION)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

$(LOCK):
	@echo "make: no lock for Python $(PY_VERSION) ($(LOCK)); use a Python of $(SUPPORTED) (PYTHON=/path/to/python, or remove $(VENV)), or run make lock after adding it to SUPPORTED" >&2; exit 1

install: $(STAMP)

## write requirements/py3.X.txt for every supported Python from pyproject.toml (its dependencies and every extra),
## every package pinned with its hashes, resolved from PyPI for Linux x86-64; run it after changing a pin
lock: $(UV)
	@for v in $(SUPPORTED); do \
	  echo "make: locking Python $$v -> requirements/py$$v.txt"; \
	  $(UV) pip compile --quiet pyproject.toml --all-extras --python-version $$v --python-platform $(LOCK_PLATFORM) \
	    --generate-hashes --prerelease disallow --only-binary :all: $(addprefix --no-binary ,$(LOCK_SDISTS)) $(LOCK_FLAGS) \
	    -o requirements/py$$v.txt || exit 1; \
	done
	@sed -i "s/^# lock sha256: .*/# lock sha256: $$(sha256sum requirements/py$(firstword $(SUPPORTED)).txt | cut -d' ' -f1)/" workflow/envs/vlprompt.yaml

$(UV):
	@if [ -z "$(PYTHON)" ]; then echo "make: no Python $(SUPPORTED) found to install uv with" >&2; exit 1; fi
	$(PYTHON) -m pip install --quiet --target .tools/uv-$(UV_VERSION) uv==$(UV_VERSION)

## run the default pipeline (the pocket benchmark) end to end; after an interrupted run (Ctrl-C, a killed
## snakemake, a power loss) the same command clears the stale lock and re-runs the unfinished jobs
run: install
	$(BIN)/python -m vlprompt unlock-stale
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete

## run the test suite (unit tests and end-to-end DAG runs on reduced pocket configs)
test: install
	$(BIN)/python -m pytest

## lint: ruff (rules and formatting), the import layers of docs/architecture.md, the type checker over src/
## ([tool.mypy] in pyproject.toml), Snakemake's linter; tests/test_lint.py runs all but the last in `make test`
lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/lint-imports --no-logo
	$(BIN)/mypy
	$(BIN)/snakemake --lint

## refresh the example reports (reports/examples/<experiment>/) from reports/<experiment>/ of the experiments
## run here: make examples EXPERIMENTS="pocket pocket_deep_prompts"
EXPERIMENTS ?= pocket
examples:
	@for e in $(EXPERIMENTS); do \
	  test -f reports/$$e/index.html || { echo "examples: reports/$$e/ does not exist; run its experiment first" >&2; exit 1; }; \
	  rm -rf reports/examples/$$e && mkdir -p reports/examples && cp -r reports/$$e reports/examples/$$e && \
	  echo "examples: reports/examples/$$e/ refreshed"; done

## optional system packages for the browser-rendered report test and the local SLURM cluster test
## (Debian/Ubuntu, as root); without them those tests are skipped with the reason
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium slurm-wlm munge >/dev/null; \
	else echo "system-deps: need root and apt-get; install chromium, slurm-wlm and munge yourself"; fi

clean-results:
	rm -rf results reports/pocket .snakemake

## fetch DVC-tracked results and mark them up to date for Snakemake (DVC does not keep file times); like run
## and test it installs first (a fresh clone: .venv and the pinned dependencies, a few minutes)
pull: install
	$(BIN)/dvc pull
	$(BIN)/dvc status --quiet || { echo "pull: outputs differ from dvc.lock; not touching them"; exit 1; }
	$(BIN)/snakemake --cores 1 --touch --forceall --quiet
