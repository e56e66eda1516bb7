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
#   FAST_SEEDS=0,1,2 (the fast recipe on all 50k images, one run per seed, before the suite; FAST_SEEDS= skips it),
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
# The fast recipe (README "The fast recipe"): airbench, 10 epochs, TTA level 2; accuracy and wall time per seed.
for seed in $(echo "${FAST_SEEDS-0,1,2}" | tr ',' ' '); do
  start=$($PY -c "import time; print(time.time())")
  $PY -m robustlab.train --model airbench --recipe fast --val-size 0 --seed "$seed" --out /tmp/fast --quiet \
    --no-tensorboard 2>&1 | tail -2 | tee -a "$OUT/suite.log"
  $PY -c "import time; print(f'fast seed $seed wall {time.time() - $start:.1f} s')" | tee -a "$OUT/suite.log"
done
if [ -d /tmp/fast/records ]; then
  $PY - "$OUT/fast_recipe.json" <<'PY'
import glob, json, sys
rows = [{k: r[k] for k in ("run_id", "wall_seconds")} | {"seed": r["config"]["seed"], "test_acc": r["metrics"]["test_acc"],
        "test_acc_tta": r["metrics"].get("test_acc_tta"), "train_seconds": r["metrics"].get("train_seconds"),
        "precision": r["precision"]} for r in map(lambda p: json.load(open(p)), sorted(glob.glob("/tmp/fast/records/*.json")))]
json.dump(rows, open(sys.argv[1], "w"), indent=1)
PY
fi
timeout "${SUITE_TIMEOUT:-560}" $PY -m robustlab.bench --suite gpu --out "$OUT" ${PARTS:+--parts "$PARTS"} ${SUITE_ARGS:-} 2>&1 | tee -a "$OUT/suite.log"
