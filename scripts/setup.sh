#!/usr/bin/env bash
# Sets up a checkout: a .venv with the project and its test extra, and the real Fashion-MNIST files that Debian
# ships (/usr/share/datasets/fashion-mnist), and, on x86-64 Linux, oneDNN's convolutions and BatchNorm for the CPU (the
# cpu-onednn extra, built with the system's cmake and g++; RESNET_JAX_ONEDNN=0 skips them). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

# oneDNN's kernels: optional; when they cannot be installed or built, one line says so and runs use XLA's.
if [ "${RESNET_JAX_ONEDNN:-1}" != "0" ] && [ "$(uname -sm)" = "Linux x86_64" ]; then
  .venv/bin/python -m pip install -q -e ".[test,cpu-onednn]" >/dev/null 2>&1 \
    || echo "oneDNN kernels: the cpu-onednn extra did not install; runs use XLA's"
fi
.venv/bin/python -m resnet_jax.onednn.build
