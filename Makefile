# Build and test entry points. CI runs `make test` from .ci/run.
#
# .venv      the project (editable) with its test extras
# .venv-hca  the official `hca` 7.0.1 CLI, kept apart: its pins clash with ours

PYTHON ?= python3
VENV := .venv
HCA_VENV := .venv-hca
PYTEST_ARGS ?=
# `make test` runs the test files on this many processes (pytest-xdist; each file stays
# on one, so a module's shared server is started once). TEST_JOBS=0 runs them in one.
TEST_JOBS ?= 2

# hca 7.0.1 pins tenacity<5.1 and Jinja2<3, which do not import on Python 3.11, and
# pip refuses to override a pin, so hca goes in with --no-deps and its requirements come
# from requirements/hca-cli.txt (its own list, those two relaxed). pip then prints an
# "ERROR: ... dependency conflicts" about exactly those two: expected, not a failure.
HCA_REQS := requirements/hca-cli.txt
# `hca` downloads the DSS swagger at start-up; this spec lets `hca dss --help` run offline.
HCA_OFFLINE_SPEC := tests/fixtures/hca_offline_spec.json

.PHONY: venv hca-venv test test-fast run bench lint clean system-deps

venv: $(VENV)/.stamp
hca-venv: $(HCA_VENV)/.stamp

$(VENV)/.stamp: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@

$(HCA_VENV)/.stamp: $(HCA_REQS)
	test -x $(HCA_VENV)/bin/python || $(PYTHON) -m venv $(HCA_VENV)
	$(HCA_VENV)/bin/python -m pip install -q --upgrade pip
	$(HCA_VENV)/bin/python -m pip install -q --no-deps hca==7.0.1
	$(HCA_VENV)/bin/python -m pip install -q -r $(HCA_REQS)
	d=$$(mktemp -d) && \
	  echo '{"swagger_filename": "$(CURDIR)/$(HCA_OFFLINE_SPEC)"}' > $$d/config.json && \
	  HCA_CONFIG_FILE=$$d/config.json XDG_CONFIG_HOME=$$d $(HCA_VENV)/bin/hca dss --help >/dev/null; \
	  rc=$$?; rm -rf $$d; exit $$rc
	touch $@

# pytest exits 5 when it collected no tests; that is not a failure here.
test: venv hca-venv
	$(VENV)/bin/python -m pytest -q $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile) $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

# The model and FUSE-adapter tiers and the import contract: no FUSE, no S3, seconds.
test-fast: venv
	$(VENV)/bin/python -m pytest -q tests/unit $(PYTEST_ARGS)

# `make run`: mount the DSS at $(MOUNT), on the embedded server unless HCAFS_DSS_URL is set.
MOUNT ?= $(HOME)/hca

system-deps:
	@command -v fusermount3 >/dev/null && command -v getfattr >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends fuse3 libfuse3-3 attr </dev/null; }

run: system-deps venv
	mkdir -p $(MOUNT)
	$(VENV)/bin/hcafs mount $(MOUNT)

bench: venv hca-venv
	$(VENV)/bin/python bench/run.py

lint: venv
	$(VENV)/bin/ruff check hcafs tests bench

clean:
	rm -rf $(VENV) $(HCA_VENV) build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
