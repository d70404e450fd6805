#!/usr/bin/env bash
# Sets up a checkout: a .venv with the project and its test extra, and the real Fashion-MNIST files that Debian
# ships (/usr/share/datasets/fashion-mnist), and, on x86-64 Linux, oneDNN's convolutions and BatchNorm for the CPU (the
# cpu-onednn extra, built with the system's cmake and g++). There a failed install or build fails the set-up, with
# pip's or the compiler's error, unless RESNET_JAX_ONEDNN=0 asks for XLA's kernels only. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
STARTED=$SECONDS
# One line per phase, as it starts: the quiet installs below take minutes on a first run.
say() { echo "setup [$((SECONDS - STARTED))s]: $*"; }

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  say "Debian data: installing dataset-fashion-mnist with apt-get (Fashion-MNIST's files, about 30 MB)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
else
  say "Debian data: Fashion-MNIST is in /usr/share/datasets/fashion-mnist"
fi

if [ -x .venv/bin/python ]; then
  say "venv: using the existing .venv"
else
  say "venv: creating .venv with $(python3 --version)"
  python3 -m venv .venv
fi
say "pip install: upgrading pip in .venv"
.venv/bin/python -m pip install -q --upgrade pip
say "pip install: the project and its test extra (jax, flax, optax, orbax, ...) into .venv; a minute or two the first time"
.venv/bin/python -m pip install -q -e ".[test]"

# Empty where the extension is meant to be: x86-64 Linux, RESNET_JAX_ONEDNN not off (build.py's own test).
NOT_WANTED="$(.venv/bin/python -c 'from resnet_jax.onednn import build; print(build.not_wanted_reason())')"
# A .venv set up before 2026-12-07 holds oneDNN's SYCL build and its Intel runtimes, 2 GB, whose lib/libdnnl.so* and
# include/oneapi/dnnl/ the cpu-onednn extra's CPU-only build would overwrite: they go first.
[ -n "$NOT_WANTED" ] || .venv/bin/python -m pip uninstall -y -qq onednn onednn-devel dpcpp-cpp-rt intel-opencl-rt \
  intel-sycl-rt intel-openmp intel-cmplr-lib-ur intel-cmplr-lic-rt umf tcmlib
if [ -z "$NOT_WANTED" ]; then
  say "pip install: oneDNN (the cpu-onednn extra: its CPU-only build, about 360 MB)"
  .venv/bin/python -m pip install -q -e ".[test,cpu-onednn]"
  say "oneDNN build: compiling the extension with cmake and g++ (a minute or two the first time)"
else
  say "oneDNN build: skipped ($NOT_WANTED)"
fi
# Says why and exits 0 where the extension is not meant to be; exits 1 with the compiler's error where it fails.
.venv/bin/python -m resnet_jax.onednn.build
say "done; next: .venv/bin/python train.py --workdir runs/fmnist --config configs/fashion_mnist.py"
