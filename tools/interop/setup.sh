#!/usr/bin/env bash
# tools/interop/setup.sh VENV TRANSFORMERS_VERSION — a virtualenv with transformers, bitsandbytes
# and torch from PyPI, for tools/interop/interop.py. Reuses VENV when it already has these
# versions. Prints the install time and the venv's size; exits non-zero when an install fails.
#
# torch: PyPI serves only the CUDA build for Linux x86-64 (no CPU-only wheel there; the CPU
# wheels live on PyTorch's own index, which this project's machines cannot reach). The CUDA
# build's libraries link against the NVIDIA runtime packages it depends on, so `import torch`
# fails without them: the whole dependency set is installed (about 3.1 GB downloaded, 5.7 GB
# on disk) and then used on the CPU only.
set -euo pipefail
venv=${1:?usage: setup.sh VENV TRANSFORMERS_VERSION}
tf=${2:?usage: setup.sh VENV TRANSFORMERS_VERSION}
TORCH=${INTEROP_TORCH:-2.15.0}
BNB=${INTEROP_BITSANDBYTES:-0.50.2}
ACCELERATE=${INTEROP_ACCELERATE:-1.16.0}

want="torch==$TORCH bitsandbytes==$BNB transformers==$tf accelerate==$ACCELERATE"
if [[ -x "$venv/bin/python" && -f "$venv/.interop-installed" && "$(cat "$venv/.interop-installed")" == "$want" ]]; then
  echo "interop: $venv already has $want"
  exit 0
fi
start=$(date +%s)
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH" "bitsandbytes==$BNB" \
  "transformers==$tf" "accelerate==$ACCELERATE" numpy safetensors
echo "$want" > "$venv/.interop-installed"
echo "interop: installed $want into $venv in $(( $(date +%s) - start )) s ($(du -sh "$venv" | cut -f1))"
