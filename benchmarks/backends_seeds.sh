#!/usr/bin/env bash
# oneDNN against XLA in the same dtype (float32), the first run's recipe, 3 seeds each: the protocol in
# benchmarks/RESULTS.md. Usage: bash benchmarks/backends_seeds.sh OUTDIR  (resumable: finished runs are skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?give a folder for the runs}"
mkdir -p "$out"
for seed in 0 1 2; do
  for backend in xla onednn; do
    workdir="$out/$backend-seed$seed"
    log="$workdir.log"
    if [ -f "$log" ] && grep -q '^done: ' "$log"; then continue; fi
    start=$(date +%s)
    .venv/bin/python train.py --workdir "$workdir" --config configs/fashion_mnist.py \
      --config.model.dtype=float32 --config.model.conv_backend="$backend" --config.seed="$seed" > "$log" 2>&1
    echo "$backend seed $seed: $(grep '^done: ' "$log") ($(( $(date +%s) - start )) s)"
  done
done
