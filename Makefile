# Two commands do everything on a fresh machine with only Python:
#   make book   build the site into _build/html, executing every notebook on the tiny profile
#   make test   ruff, nbstripout --verify, pytest (unit + nbval notebooks), the book with -W
# Both create .venv first, installing the CPU build of torch before anything that depends on it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TORCH  := torch==2.13.0

# Offline by design: nothing may download a model or a dataset at run time.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export FTCOURSE_PROFILE ?= tiny
export PYTHONHASHSEED := 0

.PHONY: setup book test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[book,test]"
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check ftcourse tests benchmarks
	$(BIN)/nbstripout --verify notebooks/*.ipynb

book: $(STAMP)
	rm -rf _build/html _build/jupyter_execute
	$(BIN)/jupyter-book build . $(BOOK_FLAGS)

# The book reuses what nbval executed (a jupyter-cache), so each notebook runs once per test.
test: lint
	rm -rf _build
	$(BIN)/pytest --keep-executed _build/.jupyter_cache
	sed 's/^\(\s*execute_notebooks:\).*/\1 cache/' _config.yml > _build/_config_test.yml
	grep -q 'execute_notebooks: cache' _build/_config_test.yml
	$(BIN)/jupyter-book build . --config _build/_config_test.yml -W -n --keep-going
	test -f _build/html/index.html
	test -f _build/html/notebooks/00_quickstart.html
	grep -q '<img' _build/html/notebooks/00_quickstart.html   # figures made it into the site

clean:
	rm -rf _build
