# Developer commands. `make help` lists them.
#
# PYTHON is the interpreter that builds (the venv's, with `pip install -e '.[test]'`
# having installed shiv). The pyz is built for that interpreter's minor version
# and platform: orjson and PyYAML ship compiled extensions.

PYTHON ?= .venv/bin/python
PYZ ?= dist/bezant-trio.pyz
# Where the installer finds the dependencies shiv bundles (e.g. PIP_ARGS=--no-index --find-links wheels/).
PIP_ARGS ?=
# The installer of the bundle's packages: uv beside PYTHON (`.ci/run` puts one in the venv) or
# on PATH installs them in a fifth of pip's CPU time (2 s against 10 s here); UV= (empty) makes
# shiv use pip, as it does when there is no uv.
UV ?= $(firstword $(wildcard $(dir $(PYTHON))uv) $(shell command -v uv 2>/dev/null))
SHIV_ARGS = --console-script bezant-trio --output-file $(PYZ) \
	--python '/usr/bin/env python3' --reproducible --compressed

.PHONY: help pyz clean-pyz

help:
	@echo "make pyz     build $(PYZ): one file, runs as 'python3 $(PYZ) run --config ...'"
	@echo "make clean-pyz"
	@echo "make bench   benchmarks vs raw baselines -> bench/RESULTS.md (~30 min; bench-quick < 60 s)"

# shiv bundles the package and its dependencies into one zipapp. At the first
# start it unpacks them (compiled extensions cannot be imported from a zip) into
# $$SHIV_ROOT (default ~/.shiv), keyed by the build, so later starts are fast.
# --reproducible: the same tree builds the same bytes (no timestamps).
# With uv, the packages are installed for PYTHON into a staging folder beside
# the pyz (removed after), which shiv bundles as it would pip's.
pyz:
	@mkdir -p $(dir $(PYZ))
ifneq ($(UV),)
	@rm -rf $(PYZ).site
	$(UV) pip install -q --native-tls --python $(PYTHON) --target $(PYZ).site --no-compile \
		$(PIP_ARGS) .
	$(PYTHON) -m shiv $(SHIV_ARGS) --site-packages $(PYZ).site
	@rm -rf $(PYZ).site
else
	$(PYTHON) -m shiv $(SHIV_ARGS) --no-cache-dir $(PIP_ARGS) .
endif
	@echo "built $(PYZ)"

clean-pyz:
	rm -f $(PYZ)

# (the `bench` target lives below this line)

# Benchmarks against the raw baselines of the daemon's own stack (bench/README.md).
# Not tests: they assert no speed. BENCH_ARGS e.g. "--only ingest,poll --runs 7 --profile".
BENCH_ARGS ?=

.PHONY: bench bench-quick

bench:
	$(PYTHON) bench/run.py $(BENCH_ARGS)

bench-quick:
	$(PYTHON) bench/run.py --quick $(BENCH_ARGS)
