#!/usr/bin/env bash
# Fills the two git-ignored folders that travel with the working tree to a lent GPU machine (name both in `carry`):
#   .whl/                 the pure-Python wheels the GPU image lacks, for Python 3.12 (no network there)
#   .data/fashion-mnist/  the original Fashion-MNIST files (31 MB), for benchmarks/time_to_accuracy.py
#   .data/cifar10-jpeg/   CIFAR-10 (JPEG), 19 MB, for configs/cifar10_jpeg_he.py, when ../shared has it
# The image already has jax 0.11 (CUDA 13), flax, optax, orbax-checkpoint, chex, absl-py, etils, numpy, protobuf,
# packaging, pyyaml, tqdm, matplotlib, pillow, pytest(-xdist, -timeout), hypothesis, torch and triton. The trainer
# also imports ml_collections (needs absl-py, PyYAML) and tensorboardX (needs numpy, packaging, protobuf): those
# two are all that is missing. tensorflow-datasets is imported only by the tfds source, which the suite never uses.
#   bash benchmarks/prepare_gpu_carry.sh      (from the root of the checkout that the device tool sends)
set -euo pipefail
cd "$(git rev-parse --show-toplevel 2>/dev/null || echo "$(dirname "$0")/..")"
PY=${PYTHON:-python3}
FASHION_SOURCE=${FASHION_SOURCE:-/usr/share/datasets/fashion-mnist}
WHEELS=("ml-collections==1.1.0" "tensorboardX==2.6.5")
CIFAR10_JPEG=${CIFAR10_JPEG:-../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz}
FASHION_FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
  t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

rm -rf .whl
mkdir -p .whl .data/fashion-mnist
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
for name in "${FASHION_FILES[@]}"; do
  cp "$FASHION_SOURCE/$name" .data/fashion-mnist/
done
if [ -f "$CIFAR10_JPEG" ]; then
  mkdir -p .data/cifar10-jpeg
  cp "$CIFAR10_JPEG" .data/cifar10-jpeg/
else
  echo "no $CIFAR10_JPEG: configs/cifar10_jpeg_he.py will not find its images on the GPU machine" >&2
fi

for wheel in .whl/*.whl; do
  echo "$(basename "$wheel") needs: $(unzip -p "$wheel" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
    | sed 's/Requires-Dist: //' | tr '\n' ' ')"
done
for path in .whl .data; do
  git check-ignore -q "$path/" || echo "WARNING: $path is not ignored by git; add /$path/ to .git/info/exclude" >&2
done
du -sh .whl .data
echo "carry: [\".whl\", \".data\"]"
