# twostream: the two quick-start commands are `make demo` and `make test`; each sets itself up on a fresh machine
# (Python 3.11, pip, gcc): a virtual environment in .venv, the package with its extras, then the job.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.twostream-installed
DOCS_STAMP := $(VENV)/.twostream-docs-installed
# An optional prebuilt detectron2 wheel (see ../shared/wheels/README.md); detectron2 is not on PyPI.
D2_WHEEL := $(firstword $(wildcard ../shared/wheels/detectron2-*.whl))

.PHONY: setup browser test lint docs demo clean-demo

setup: $(STAMP)

# Python packages only: the package with its extras (dev: tests and lint; hf: published segmenters; demo: Gradio).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,hf,demo]"
# detectron2 is not on PyPI: install the prebuilt wheel when ../shared/wheels has one (its model zoo needs
# pkg_resources, which setuptools 81 dropped).
	$(if $(D2_WHEEL),$(BIN)/python -m pip install -q 'setuptools<81' $(D2_WHEEL))
	touch $(STAMP)

# The browser test needs Chromium and its driver: install them when missing and apt-get can (CI runs as root);
# without Chromium that test is skipped, and this line never fails the build. Only `make test` asks for it.
browser:
	-@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || echo "note: Chromium not installed; the browser tests will be skipped"

lint: setup
	$(BIN)/ruff check .

# The documentation site (mkdocs-material + mkdocstrings: the docs extra) from docs/ and mkdocs.yml into site/
# (git-ignored); --strict fails on a broken link or anchor. Only `make docs` and `make test` install the extra.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	@echo "docs built: site/index.html"

# The test suite (CI runs exactly this through .ci/run); tests/test_docs.py builds the docs site too (seconds).
test: setup $(DOCS_STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The quick start, end to end on CPU: synthetic ADE20K-format scenes -> (1) train the segmenter -> (2) cache its scene
# graphs -> (3) train the two-stream classifier -> evaluate -> infer on real photographs shipped with scikit-image.
# tools/quickstart.py runs exactly these tool commands (it prints each) in one process, so the start-up (torch,
# torch_geometric, ...) is paid once, not six times. Every step is resumable: running `make demo` again skips what is done.
demo: setup
	$(BIN)/python tools/quickstart.py
	@echo "demo done: runs/quickstart holds the checkpoints, eval-validation/ the metrics, infer/ the predictions"

clean-demo:
	rm -rf runs/quickstart runs/quickstart_seg datasets/synthetic
