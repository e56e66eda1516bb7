#!/usr/bin/env bash
# The GPU suite on a device machine: python -m robustlab.bench --suite gpu, JSON and log into $OUT.
#
# Prepare once, in the repository root of the machine that holds the data (both folders travel
# with the working tree; list them in the device tool's `carry` when they are git-ignored):
#   mkdir -p .whl .data
#   .venv/bin/pip download --no-deps -d .whl pytorch-metric-learning
#   tar czf .data/cifar10.tgz -C "$ROBUSTLAB_DATA" cifar10          # ~20 MB
# Run (device tool): command "ROBUSTLAB_COMMIT=$(git rev-parse --short=12 HEAD) bash benchmarks/gpu/run_on_device.sh",
#   carry [".whl", ".data"], timeout_s 590. Then copy $OUT/*.json into benchmarks/gpu/ and commit it.
# Options (environment): PARTS=throughput,time_to_accuracy,noisy_labels_paper (default all),
#   SUITE_TIMEOUT=560 (seconds; the suite's own part budgets end it within ~8 minutes), CUDA_TESTS=1 (pytest -m cuda first, ~1 min).
#   SUITE_ARGS="--smoke --device cpu" tries the script on a CPU.
set -euo pipefail
OUT=${OUT:-benchmarks/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT" /tmp/site /tmp/d
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
tar xzf .data/cifar10.tgz -C /tmp/d
export ROBUSTLAB_DATA=/tmp/d ROBUSTLAB_CACHE=/tmp/robustlab-cache
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" | tee "$OUT/suite.log"
if [ "${CUDA_TESTS:-0}" = "1" ]; then
  $PY -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tail -15 | tee -a "$OUT/suite.log" || true
fi
timeout "${SUITE_TIMEOUT:-560}" $PY -m robustlab.bench --suite gpu --out "$OUT" ${PARTS:+--parts "$PARTS"} ${SUITE_ARGS:-} 2>&1 | tee -a "$OUT/suite.log"
