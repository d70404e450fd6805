#!/usr/bin/env bash
# CIFAR-10 (JPEG), the recipe re-derived on validation and scored once on test: the protocol in
# benchmarks/RESULTS.md ("CIFAR-10 (JPEG), re-derived on validation"). Resumable: run it again to go on.
# Usage: bash benchmarks/cifar10_jpeg_protocol.sh OUTDIR choose   (stage 1: the grid on the 45,000 / 5,000 split)
#        bash benchmarks/cifar10_jpeg_protocol.sh OUTDIR final --config.optimizer.learning_rate=R --config.train.ema_decay=E
#                                                                 (stage 2: the chosen recipe, seeds 10-12, all 50,000)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?give a folder for the runs}"
stage="${2:?give the stage: choose or final}"
shift 2
mkdir -p "$out"
case "$stage" in
  choose)
    .venv/bin/resnet-jax sweep --workdir "$out/choose" --config configs/cifar10_jpeg.py \
      --config.data.validation_size=5000 \
      --grid optimizer.learning_rate=0.1,0.2,0.4 --grid train.ema_decay=0,0.999
    ;;
  final)
    for seed in 10 11 12; do
      workdir="$out/final-seed$seed"
      log="$workdir.log"
      if [ -f "$log" ] && grep -q '^done: ' "$log"; then continue; fi
      start=$(date +%s)
      .venv/bin/python train.py --workdir "$workdir" --config configs/cifar10_jpeg.py --config.seed="$seed" "$@" \
        >> "$log" 2>&1
      echo "seed $seed: $(grep '^done: ' "$log") ($(( $(date +%s) - start )) s, this invocation)"
    done
    ;;
  *) echo "stage must be choose or final, not $stage" >&2; exit 2 ;;
esac
