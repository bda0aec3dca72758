# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast test-gpu lint clean browser bench

install: $(STAMP)

# torch/torchvision first, pinned to the builds on this machine's disk (any other pin downloads
# gigabytes); constraints.txt pins the rest to the versions the test suite passed with.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	# the parity extra's sampling code alone (k-diffusion's own requirements are its training stack)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt k-diffusion torchdiffeq
	touch $@

demo: $(STAMP)
	$(BIN)/autotune study studies/demo.toml
	$(BIN)/autotune study studies/demo_flow.toml
	@echo "open studies/demo/report.html and studies/demo_flow/report.html, or: $(BIN)/autotune dashboard studies/demo.toml"

# One pytest worker per core, a test file per worker at a time (its module fixtures are built once).
test: $(STAMP) browser
	$(BIN)/pytest -n 2 --dist loadfile

# The quick lane while working: every test not marked slow (`make test` runs them all, as CI does).
test-fast: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile -m "not slow"

# The report's browser test renders report.html in Debian's headless Chromium.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 \
	  || ($(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null) \
	  || echo "warning: could not install chromium; the browser test will be skipped"

# Benchmarks print their figures and write them to benchmarks/results/*.json (not part of make test).
bench: $(STAMP)
	$(BIN)/python benchmarks/search.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/routing.py

test-gpu: $(STAMP)
	$(BIN)/pytest -m gpu

lint: $(STAMP)
	$(BIN)/ruff check autotune tests benchmarks examples
	$(BIN)/ruff format --check autotune tests benchmarks examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) studies/*.db studies/demo studies/demo_flow .pytest_cache .mypy_cache .ruff_cache
