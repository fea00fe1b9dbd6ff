# Two commands do everything on a fresh machine with only Python:
#   make book   build the site into _build/html, executing every notebook on the tiny profile
#               (side by side, each claim checked: make executed)
#   make serve  preview the built site at http://127.0.0.1:8000
#   make bench  our implementations against the libraries' (ratios, benchmarks/results/)
#   make test   ruff, nbstripout --verify, pytest (unit + nbval notebooks), the equivalence tests again
#               under ATEN_CPU_CAPABILITY=default and =avx2, every notebook again on the GPU profile's
#               code path (make test-hub), the book with -W
# Both create .venv first, installing the CPU build of torch before anything that depends on it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TORCH  := torch==2.13.0

# Tests and notebooks side by side: one pytest-xdist worker per core (at most 4), one torch thread
# each, a test module or a notebook whole on one worker. On 2 cores the book takes 3.8 min instead
# of 4.8 and the unit tests 2 instead of 3, and every claim measures the same (benchmarks/README.md).
SIDE_BY_SIDE   := OMP_NUM_THREADS=1 $(BIN)/pytest -n auto --maxprocesses 4 --dist loadscope
AFTER_CHAPTERS := notebooks/09_claims_ledger.ipynb book/choosing.ipynb

# Offline by design: nothing may download a model or a dataset at run time.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export FTCOURSE_PROFILE ?= tiny
export PYTHONHASHSEED := 0
export FTCOURSE_SOLUTIONS := show

.PHONY: setup browser book executed serve timings profile catalogue bench equivalence test-hub test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[book,test]"
	touch $(STAMP)

setup: $(STAMP)

# Headless Chromium for sitetests/: Debian's package (Playwright never downloads a browser here).
browser:
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

lint: $(STAMP)
	$(BIN)/ruff check ftcourse tests benchmarks sitetests cloud
	$(BIN)/nbstripout --verify notebooks/*.ipynb book/*.ipynb

book: $(STAMP)
	rm -rf _build/html _build/jupyter_execute
	$(MAKE) executed
	$(BIN)/jupyter-book build . --config _build/_config_cached.yml -W -n --keep-going

# Every notebook and book page executed once on this profile, side by side, by nbval (so every
# claim is checked on the way), into a jupyter-cache that the book build reads instead of running
# them again (execute_notebooks: cache). The claims ledger and the choosing page read what the
# chapters wrote, so they run after them.
executed: $(STAMP)
	rm -rf _build/.jupyter_cache _build/notebook_times.json
	$(SIDE_BY_SIDE) notebooks book --keep-executed _build/.jupyter_cache \
		--notebook-times _build/notebook_times.json $(foreach page,$(AFTER_CHAPTERS),--ignore=$(page))
	$(BIN)/pytest --keep-executed _build/.jupyter_cache --notebook-times _build/notebook_times.json \
		$(AFTER_CHAPTERS)
	sed 's/^\(\s*execute_notebooks:\).*/\1 cache/' _config.yml > _build/_config_cached.yml
	grep -q 'execute_notebooks: cache' _build/_config_cached.yml

serve:
	@test -f _build/html/index.html || (echo 'No site yet: run make book first.' && exit 1)
	$(BIN)/python -m http.server 8000 --bind 127.0.0.1 --directory _build/html

# Ours against the libraries on the CPU (benchmarks/README.md): about 4 minutes on 2 cores;
# writes benchmarks/results/report.json, report.md and ratios.png.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# Re-measure each notebook's run time alone, as a learner runs it, then the whole book as make book
# runs it (side by side), for the instructors' guide (book/_timings.md); about 9 minutes on 2 cores.
timings: $(STAMP)
	$(BIN)/python benchmarks/notebook_times.py --measure

# Where the book's time goes: every notebook cell by cell, with the training steps and tokens of
# each cell (benchmarks/results/cell_profile.md); about as long as the book.
profile: $(STAMP)
	$(BIN)/python benchmarks/cell_profile.py

# Regenerate the book's table of bad inputs (book/_catalogue.md) from tests/catalogue.py.
catalogue: $(STAMP)
	$(BIN)/python tests/catalogue.py

# The equivalence tests once more with torch's portable kernels and its AVX2 ones, whatever this
# CPU has, so one run shows they hold on the instruction sets learners have (tests/tolerance.py).
# bitsandbytes picks its kernels by the CPU itself: tests/known_defects.py says what that leaves.
# bitsandbytes sends some CPU paths (a 4-bit size not a multiple of the block) through torch.compile,
# compiled once per process, shape and kernel set. The unit run checks them compiled; these runs
# call the same functions eagerly (TORCH_COMPILE_DISABLE=1), the same products, and skip compiling
# for kernel sets the cache lacks (58 -> 47 s and 46 -> 35 s with no cache on the AVX-512 kind).
equivalence: $(STAMP)
	for capability in default avx2; do \
		echo "== equivalence tests, ATEN_CPU_CAPABILITY=$$capability"; \
		ATEN_CPU_CAPABILITY=$$capability TORCH_COMPILE_DISABLE=1 $(SIDE_BY_SIDE) tests -m equivalence -q || exit 1; \
	done

# Every notebook and book page through the GPU profile's code path, on whatever device there is:
# a random SmolLM2-shaped model folder with its own tokenizer and local files with each hub
# dataset's columns, float32 (tests/run_hub.sh). Claims calibrated on the tiny model are shown
# and recorded there (in _build/hub/results), not asserted; equality with the libraries is asserted.
test-hub: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH PYTEST_WORKERS=auto OMP_NUM_THREADS=1 bash tests/run_hub.sh _build/hub

# The book reuses what nbval executed (make executed), so each notebook runs once per test.
# The notebooks' times are shown beside the instructors' guide's, never checked: time is no test
# (and these run side by side, so each takes longer than alone; make timings measures them alone).
test: lint browser
	rm -rf _build notebooks/results      # a fresh results folder: every run trained, none loaded
	$(SIDE_BY_SIDE) tests
	$(MAKE) executed
	$(MAKE) equivalence
	$(MAKE) test-hub
	$(BIN)/python benchmarks/notebook_times.py --show _build/notebook_times.json
	$(BIN)/jupyter-book build . --config _build/_config_cached.yml -W -n --keep-going
	test -f _build/html/index.html
	test -f _build/html/notebooks/00_quickstart.html
	grep -q '<img' _build/html/notebooks/00_quickstart.html   # figures made it into the site
	$(BIN)/pytest sitetests -p no:cacheprovider

clean:
	rm -rf _build
