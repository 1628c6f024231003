#!/usr/bin/env bash
# The GPU check: the tests marked `gpu`, then each model's throughput on one CUDA GPU.
#
# Runs from the repository with PYTHONPATH=src on a machine whose Python has torch (CUDA),
# numba, pyarrow, safetensors and sentencepiece; it needs neither pyspark nor Prefect nor a
# network. The tables come prepared (built here with Spark by `make gpu-tables`, about
# 40 MB, carried to that machine): bench/out/gpu-tables, or the directory given as $1.
# Fails at once, saying so, where torch sees no CUDA GPU. Takes 2-4 minutes.
#
# Usage: bash bench/gpu_check.sh [TABLES_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1
tables=${1:-bench/out/gpu-tables}
python=${PYTHON:-python3}

if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: torch sees no CUDA GPU here (torch.cuda.is_available() is False): run it" \
       "on a machine with one, with a CUDA build of torch" >&2
  exit 2
fi
for table in vocab sequences cooccur buckets; do
  if [ ! -f "$tables/$table/_MANIFEST.json" ]; then
    echo "gpu_check: $tables/$table is missing: run 'make gpu-tables' where Spark is" \
         "installed and bring bench/out/gpu-tables along" >&2
    exit 2
  fi
done
"$python" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'

echo "== tests marked gpu"
"$python" -m pytest -q -m gpu -p no:cacheprovider tests/train/test_gpu.py

echo "== throughput on one GPU (one process; rates from each run's _TRAINED.json)"
out=$(mktemp -d)
run() {  # model, epochs, settings...
  local model=$1 epochs=$2
  shift 2
  timeout 150 "$python" -m embedpipe.train --out "$out/$model" --set "workdir=$tables" \
    --set "train.model=$model" --set "train.epochs=$epochs" --set train.log_every=1000000 \
    --set train.nproc=1 "${@/#/--set=}" >"$out/$model.log" 2>&1 \
    || { tail -20 "$out/$model.log"; return 1; }
  "$python" - "$out/$model/_TRAINED.json" "$model" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
unit = {"glove": "entries/s", "mlm": "tokens/s"}.get(sys.argv[2], "words/s")
print(f"{sys.argv[2]:6s} {s['words_per_sec']:>14,} {unit}  ({s['steps']} steps, {s['seconds']} s)")
PY
}
run sgns 10 train.sgns.batch_size=65536
run cbow 10 train.cbow.batch_size=65536
run glove 20 train.glove.x_max=10.0
run mlm 1 train.mlm.max_tokens=16384
rm -rf "$out"
