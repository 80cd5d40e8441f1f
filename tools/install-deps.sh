#!/usr/bin/env bash
# Installs what llmint8 needs to build and test, from Debian's packages.
# The CUDA backend is built too when nvcc is found (/usr/local/cuda/bin); it is optional.
set -euo pipefail
pkgs=(meson ninja-build pkg-config gcc libc6-dev libcjson-dev libpcre2-dev libzip-dev libmicrohttpd-dev python3 clang libclang-rt-dev
      libopenmpi-dev openmpi-bin)  # MPI: pipelines across processes (optional at build time)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
