#!/usr/bin/env bash
# Sets up a checkout: a .venv with the project and its test extra, and the real Fashion-MNIST files that Debian
# ships (/usr/share/datasets/fashion-mnist), and, on x86-64 Linux, oneDNN's convolutions and BatchNorm for the CPU (the
# cpu-onednn extra, built with the system's cmake and g++). There a failed install or build fails the set-up, with
# pip's or the compiler's error, unless RESNET_JAX_ONEDNN=0 asks for XLA's kernels only. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
echo "setup: installing the project and its test extra into .venv"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

# Empty where the extension is meant to be: x86-64 Linux, RESNET_JAX_ONEDNN not off (build.py's own test).
NOT_WANTED="$(.venv/bin/python -c 'from resnet_jax.onednn import build; print(build.not_wanted_reason())')"
# A .venv set up before 2026-12-07 holds oneDNN's SYCL build and its Intel runtimes, 2 GB, whose lib/libdnnl.so* and
# include/oneapi/dnnl/ the cpu-onednn extra's CPU-only build would overwrite: they go first.
[ -n "$NOT_WANTED" ] || .venv/bin/python -m pip uninstall -y -qq onednn onednn-devel dpcpp-cpp-rt intel-opencl-rt \
  intel-sycl-rt intel-openmp intel-cmplr-lib-ur intel-cmplr-lic-rt umf tcmlib
if [ -z "$NOT_WANTED" ]; then
  echo "setup: installing oneDNN (the cpu-onednn extra, about 2 GB; minutes on a first run)"
  .venv/bin/python -m pip install -q -e ".[test,cpu-onednn]"
fi
# Says why and exits 0 where the extension is not meant to be; exits 1 with the compiler's error where it fails.
.venv/bin/python -m resnet_jax.onednn.build
