# `make demo` and `make test` each create .venv and install the project when needed.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# laion_clap (also imported by frechet_audio_distance) retries the HF hub for minutes when online mode is on.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[dev,bench]'  # bench: tests/test_bench.py runs the quick bench
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	$(PYTHON) -m demo $(DEMO_ARGS)

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q -ra -n 2 --dist loadfile  # two workers, a test file each: CI's two cores

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

bench: install
	$(PYTHON) -m pip install -q -e '.[dev,bench]'
	$(PYTHON) -m bench.run

clean:
	rm -rf outputs .cache mlflow.db mlartifacts
