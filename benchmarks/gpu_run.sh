#!/usr/bin/env bash
# The GPU session in one script, for a machine with one CUDA GPU and no network: every notebook
# through the GPU profile's code path on CUDA (tests/run_hub.sh: the device test for real), then
# benchmarks/gpu_check.py. Results go to benchmarks/results/gpu/<GPU name>/ to be committed.
#   bash benchmarks/gpu_run.sh            (the `python` on PATH has ftcourse and its libraries)
set -euo pipefail
cd "$(dirname "$0")/.."
machine=$(python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; \
print(torch.cuda.get_device_name().replace(' ', '-'))")
out=benchmarks/results/gpu/$machine
mkdir -p "$out"
python benchmarks/gpu_check.py --out "$out/gpu_check.json"
status=0
bash tests/run_hub.sh _build/hub > "$out/test_hub.log" 2>&1 || status=$?
tail -n 5 "$out/test_hub.log"
cp -r _build/hub/results/gpu "$out/claims" 2>/dev/null || true   # what each check measured on CUDA
python -m ftcourse.cli doctor > "$out/doctor.txt" 2>&1 || true
echo "test-hub exit $status; results in $out"
exit $status
