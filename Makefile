# Two commands a user needs: `make run` (the default pipeline) and `make test` (the test suite).
# Both create .venv and install the project on first use, and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= 2
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# the rules call `python -m vlprompt`: make the project's environment the one on PATH
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install run test lint system-deps clean-results pull

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## run the default pipeline (the pocket benchmark) end to end
run: install
	$(BIN)/snakemake --cores $(CORES)

## run the test suite (unit tests and end-to-end DAG runs on reduced pocket configs)
test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakemake --lint

## optional system packages for the browser-rendered report test and the local SLURM cluster test
## (Debian/Ubuntu, as root); without them those tests are skipped with the reason
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium slurm-wlm munge >/dev/null; \
	else echo "system-deps: need root and apt-get; install chromium, slurm-wlm and munge yourself"; fi

clean-results:
	rm -rf results reports/pocket .snakemake

## fetch DVC-tracked results and mark them up to date for Snakemake (DVC does not keep file times)
pull: install
	$(BIN)/dvc pull
	$(BIN)/dvc status --quiet || { echo "pull: outputs differ from dvc.lock; not touching them"; exit 1; }
	$(BIN)/snakemake --cores 1 --touch --forceall --quiet
