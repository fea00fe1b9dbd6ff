#!/usr/bin/env bash
# Every notebook and book page through the GPU profile's code path, on this machine's device (the
# GPU if there is one): a random SmolLM2-shaped model with its own tokenizer and local files with
# each hub dataset's columns (tests/hub_fixture.py), float32. Calibrated claims are recorded in
# DIR/results/gpu, not asserted; equality with the libraries is asserted.
#   tests/run_hub.sh DIR        (the `python` on PATH; `make test-hub` puts .venv's first)
#   PYTEST_WORKERS=auto OMP_NUM_THREADS=1 tests/run_hub.sh DIR    (side by side, as make test-hub)
set -euo pipefail
hub=$(realpath -m "${1:?usage: tests/run_hub.sh DIR}")
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0
rm -rf "$hub"
python tests/hub_fixture.py "$hub"
export FTCOURSE_PROFILE=gpu FTCOURSE_MODEL="$hub/model" FTCOURSE_DATA_DIR="$hub/data" FTCOURSE_DTYPE=float32 \
    FTCOURSE_RESULTS="$hub/results"
# PYTEST_WORKERS=auto (make test-hub, with OMP_NUM_THREADS=1): notebooks side by side, as make test;
# the claims ledger and the choosing page read what the chapters wrote, so they run after them.
after=(notebooks/09_claims_ledger.ipynb book/choosing.ipynb)
python -m pytest notebooks book -p no:cacheprovider -n "${PYTEST_WORKERS:-0}" --maxprocesses 4 --dist loadscope \
    "${after[@]/#/--ignore=}"
python -m pytest "${after[@]}" -p no:cacheprovider
test -s "$hub/results/gpu/checks.json"
