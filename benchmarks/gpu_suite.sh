#!/usr/bin/env bash
# The whole benchmark suite in ONE call on a lent GPU machine, within a hard time budget (default 480 s):
# throughput and floors, JAX against PyTorch (ResNet-20 and ResNet-18, batch 512), the fixed-length Fashion-MNIST
# recipe to its end (its wall time and final test accuracy, one seed; nothing stops on test),
# the GPU-relevant tests, He et al.'s 64k-step ResNet-20 recipe, and last the scan as one CUDA graph (XLA flags).
# Each stage has its own time limit, and a failing stage does not stop the next. Full logs and JSON go to
# $OUT/gpu_suite.tar.gz (refreshed after every stage), the summary to $OUT/summary.md and, last, to stdout.
#
#   bash benchmarks/prepare_gpu_carry.sh            # here, once: fills .whl/ and .data/
#   run(command="bash benchmarks/gpu_suite.sh", carry=[".whl", ".data"], timeout_s=540)
#   bash benchmarks/gpu_suite.sh --smoke            # the same stages at toy sizes on a CPU (2 minutes on 2 cores)
set -u
cd "$(dirname "$0")/.."

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
BUDGET=${GPU_SUITE_BUDGET:-480}
[ "$SMOKE" = 1 ] && BUDGET=${GPU_SUITE_BUDGET:-400}
START=$(date +%s)
WORK=${GPU_SUITE_WORK:-/tmp/gpu_suite}
RESULTS=${OUT:-$WORK/out}
rm -rf "$WORK/results"
mkdir -p "$WORK/results" "$RESULTS"
R=$WORK/results

# The device image has jax in python3 or ../venv; here the README's setup puts it in .venv.
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && ! "$PY" -c "import jax" 2>/dev/null; then
  for candidate in .venv/bin/python ../venv/bin/python; do
    if [ -x "$candidate" ] && "$candidate" -c "import jax" 2>/dev/null; then
      PY=$candidate
      break
    fi
  done
fi
if ! "$PY" -c "import jax" 2>/dev/null; then
  echo "error: $PY cannot import jax; run 'bash scripts/setup.sh' first, or set PYTHON to an interpreter that has it" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import ml_collections, tensorboardX" 2>/dev/null; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl; then
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "could not install the carried wheels (.whl/); run benchmarks/prepare_gpu_carry.sh and carry .whl" >&2
  fi
fi

elapsed() { echo $(($(date +%s) - START)); }

bundle() {
  tar czf "$RESULTS/gpu_suite.tar.gz" -C "$R" . 2>/dev/null
}

# stage NAME LIMIT_SECONDS COMMAND...: runs COMMAND with its output in $R/NAME.log, at most LIMIT seconds and never
# past the budget; records "NAME<TAB>exit code<TAB>seconds" in $R/stages.tsv.
stage() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - $(elapsed)))
  if [ "$left" -lt 25 ]; then
    printf '%s\tskipped (budget)\t0\n' "$name" >>"$R/stages.tsv"
    echo "=== $name: skipped, ${left}s of the budget left"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (at most ${limit}s; $(elapsed)s into the suite)"
  local began=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$R/$name.log" 2>&1
  local code=$?
  printf '%s\t%s\t%s\n' "$name" "$code" "$(($(date +%s) - began))" >>"$R/stages.tsv"
  grep -v -i -E "warn|^\s*$" "$R/$name.log" | tail -n 14
  bundle
}

{
  date -u
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv 2>/dev/null
  "$PY" -c "import jax, jaxlib; print('jax', jax.__version__, jaxlib.__version__, jax.devices())"
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" 2>&1 | tail -1
} >"$R/environment.log" 2>&1
cat "$R/environment.log"

if [ "$SMOKE" = 1 ]; then
  THROUGHPUT=(--configs resnet8_tiny:32:float32:2 --examples 256 --windows 2 --min-window-seconds 0.2)
  TORCH_COMMON=(--models resnet8_tiny --batches 32 --jax float32 --steps-per-call 2 --examples 256 --windows 2
    --min-window-seconds 0.2)
  TORCH_FIRST=("${TORCH_COMMON[@]}" --variants eager,channels_last)
  TORCH_SECOND=("${TORCH_COMMON[@]}" --variants channels_last@1)
  TINY=(--set model.name=resnet8_tiny --set train.num_steps=8 --set train.num_epochs=0 --set train.steps_per_call=4
    --set train.log_every_steps=4)
  FASHION=(--task fashion_mnist --target 0.3 --time-limit 120 "${TINY[@]}" --set train.batch_size=64)
  HE=(--task he_resnet20 --time-limit 120 "${TINY[@]}" --set data.synthetic_train_examples=512
    --set data.synthetic_test_examples=256 --set eval.batch_size=256)
  TESTS=(tests/test_steps.py)
  GRAPHS=(--configs resnet8_tiny:32:float32:2 --examples 256 --windows 2 --min-window-seconds 0.2 --no-costs)
  GRAPH_FLAGS=""
  LIMITS=(120 120 120 120 120 120 60)
else
  # Order: what the goals need first; --budget-seconds lets throughput end inside its own limit.
  THROUGHPUT=(--configs "resnet20:512:bfloat16:50,resnet18:512:bfloat16:50,resnet20:512:float32:50,\
resnet18:512:float32:50,resnet20:128:bfloat16:1,resnet20:128:bfloat16:50,resnet20:128:float32:50,\
resnet56:512:bfloat16:50,seed_resnet:512:bfloat16:50,resnet20:1024:bfloat16:40,resnet18:1024:bfloat16:40,\
resnet18:128:bfloat16:50" --windows 5 --min-window-seconds 0.5 --budget-seconds 55)
  # torch.compile last: not started 40 s into the stage (it needs ~40 s more; the summary then says it is missing);
  # no timing round starts after 85 s, so the stage ends inside its 100 s with a result.
  TORCH_COMMON=(--batches 512 --jax bfloat16 --variants eager,channels_last,bf16_autocast,compile_bf16
    --steps-per-call 50 --examples 25600 --windows 5 --min-window-seconds 0.5 --build-budget-seconds 40
    --deadline-seconds 85)
  TORCH_FIRST=(--models resnet20 "${TORCH_COMMON[@]}")
  TORCH_SECOND=(--models resnet18 "${TORCH_COMMON[@]}")
  FASHION=(--task fashion_mnist --time-limit 55)
  HE=(--task he_resnet20 --time-limit 70)
  TESTS=()
  for file in tests/test_steps.py tests/test_models.py tests/test_augment.py tests/test_trainer.py; do
    [ -f "$file" ] && TESTS+=("$file")
  done
  # The scan as one CUDA graph: XLA's default command buffers leave while loops out.
  GRAPHS=(--configs resnet20:128:bfloat16:50,resnet20:512:bfloat16:50 --windows 3 --min-window-seconds 0.5
    --no-costs)
  GRAPH_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,\
WHILE,CONDITIONAL"
  LIMITS=(80 100 100 65 80 40 35)
fi

stage throughput "${LIMITS[0]}" "$PY" -m benchmarks.throughput "${THROUGHPUT[@]}" --json "$R/throughput.json"
XLA_PYTHON_CLIENT_MEM_FRACTION=.45 stage torch_resnet20 "${LIMITS[1]}" "$PY" -m benchmarks.torch_reference \
  "${TORCH_FIRST[@]}" --json "$R/torch_resnet20.json"
XLA_PYTHON_CLIENT_MEM_FRACTION=.45 stage torch_resnet18 "${LIMITS[2]}" "$PY" -m benchmarks.torch_reference \
  "${TORCH_SECOND[@]}" --json "$R/torch_resnet18.json"
stage tta_fashion_mnist "${LIMITS[3]}" "$PY" -m benchmarks.time_to_accuracy "${FASHION[@]}" \
  --json "$R/tta_fashion_mnist.json"
if [ "$SMOKE" = 1 ]; then
  stage tests "${LIMITS[5]}" "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
else
  JAX_PLATFORMS=cuda stage tests "${LIMITS[5]}" "$PY" -m pytest -q -p no:cacheprovider -rfE "${TESTS[@]}"
fi
stage tta_he_resnet20 "${LIMITS[4]}" "$PY" -m benchmarks.time_to_accuracy "${HE[@]}" --json "$R/tta_he_resnet20.json"
XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$GRAPH_FLAGS" stage throughput_while_graphs "${LIMITS[6]}" \
  "$PY" -m benchmarks.throughput "${GRAPHS[@]}" --json "$R/throughput_while_graphs.json"

"$PY" -m benchmarks.suite_summary "$R" >"$R/summary.md" 2>&1
cp "$R/summary.md" "$RESULTS/summary.md"
bundle
echo
echo "suite took $(elapsed)s (budget ${BUDGET}s); logs and JSON: $RESULTS/gpu_suite.tar.gz"
echo
cat "$R/summary.md"
