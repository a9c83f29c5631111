# Developer commands. `make help` lists them.
#
# PYTHON is the interpreter that builds (the venv's, with `pip install -e '.[test]'`
# having installed shiv). The pyz is built for that interpreter's minor version
# and platform: orjson and PyYAML ship compiled extensions.

PYTHON ?= .venv/bin/python
PYZ ?= dist/bezant-trio.pyz
# Where pip finds the dependencies shiv bundles (e.g. PIP_ARGS=--no-index --find-links wheels/).
PIP_ARGS ?=

.PHONY: help pyz clean-pyz

help:
	@echo "make pyz     build $(PYZ): one file, runs as 'python3 $(PYZ) run --config ...'"
	@echo "make clean-pyz"
	@echo "make bench   benchmarks vs raw baselines -> bench/RESULTS.md (~30 min; bench-quick < 60 s)"

# shiv bundles the package and its dependencies into one zipapp. At the first
# start it unpacks them (compiled extensions cannot be imported from a zip) into
# $$SHIV_ROOT (default ~/.shiv), keyed by the build, so later starts are fast.
# --reproducible: the same tree builds the same bytes (no timestamps).
pyz:
	@mkdir -p $(dir $(PYZ))
	$(PYTHON) -m shiv --console-script bezant-trio --output-file $(PYZ) \
		--python '/usr/bin/env python3' --reproducible --compressed \
		--no-cache-dir $(PIP_ARGS) .
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
