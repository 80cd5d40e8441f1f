#!/usr/bin/env bash
# tools/peers/setup.sh [VENV] — the virtualenv for tools/peers/peers.py (default
# ~/.cache/llmint8-peers), from PyPI: llama-cpp-python (compiles llama.cpp from its sdist),
# gguf, torch, transformers, ctranslate2, numpy, safetensors. Reused when it already holds the
# same requirement list. Prints how long each step took.
#
# llama.cpp is built Release with -march=native (GGML_NATIVE), under `nice`, with
# $PEERS_BUILD_JOBS parallel jobs (default: all CPUs); set CMAKE_ARGS to add flags.
#
# torch: the CPU-only wheels live on PyTorch's own index; when that index answers, torch comes
# from there (about 200 MB), otherwise from PyPI, where Linux x86-64 gets the CUDA build and its
# NVIDIA runtime packages (about 3 GB; used on the CPU only).
#
# Exit status: 0 ready; 77 a download or build failed (a message says which), so a caller can
# report "peers: skipped".
set -uo pipefail
venv=${1:-${PEERS_VENV:-$HOME/.cache/llmint8-peers}}
want="llama-cpp-python${PEERS_LLAMA_CPP:+==$PEERS_LLAMA_CPP} gguf${PEERS_GGUF:+==$PEERS_GGUF}"
want+=" torch${PEERS_TORCH:+==$PEERS_TORCH} transformers${PEERS_TRANSFORMERS:+==$PEERS_TRANSFORMERS}"
want+=" ctranslate2${PEERS_CTRANSLATE2:+==$PEERS_CTRANSLATE2} numpy safetensors"
stamp=$venv/.peers-installed
fail() { echo "peers: setup failed: $*" >&2; exit 77; }

if [[ -x $venv/bin/python && -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
  echo "peers: $venv already has: $want"
  exit 0
fi
command -v python3 >/dev/null || fail "no python3"
command -v cmake >/dev/null || fail "no cmake (llama-cpp-python compiles llama.cpp with it)"
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv" || fail "python3 -m venv $venv (Debian: apt-get install python3-venv)"
pip=("$venv/bin/pip" install --disable-pip-version-check --progress-bar off)
step() {  # step NAME ARGS...: one pip install, timed; any failure ends setup with 77.
  local name=$1 t0=$SECONDS; shift
  echo "peers: installing $name ..."
  "${pip[@]}" "$@" || fail "pip install $name (PyPI unreachable, or the build failed: see above)"
  echo "peers: $name installed in $(( SECONDS - t0 )) s"
}
read -r -a req <<<"$want"
torch_req=${req[2]}
step "pip, wheel" --upgrade pip wheel
step "numpy, safetensors, gguf" numpy safetensors "${req[1]}"
if curl -fsS --max-time 10 -o /dev/null https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then
  step "$torch_req (CPU wheel)" --index-url https://download.pytorch.org/whl/cpu "$torch_req"
else
  echo "peers: PyTorch's CPU index does not answer; torch comes from PyPI (the CUDA build)"
  step "$torch_req (PyPI)" "$torch_req"
fi
step "transformers, ctranslate2" "${req[3]}" "${req[4]}"
# llama.cpp from source: Release, native; OpenMP threads like llama-bench's default build.
export CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON ${CMAKE_ARGS:-}"
export CMAKE_BUILD_PARALLEL_LEVEL=${PEERS_BUILD_JOBS:-$(nproc)}
pip=(nice -n 10 "${pip[@]}")
step "${req[0]} (compiles llama.cpp: $CMAKE_ARGS)" --no-binary llama-cpp-python --no-cache-dir "${req[0]}"
"$venv/bin/python" -c "import llama_cpp, gguf, torch, transformers, ctranslate2, safetensors" \
  || fail "the installed packages do not import"
echo "$want" > "$stamp"
echo "peers: ready in $venv ($(du -sh "$venv" | cut -f1)):"
"$venv/bin/pip" list --disable-pip-version-check 2>/dev/null \
  | grep -iE '^(llama.cpp.python|gguf|torch|transformers|ctranslate2|numpy|safetensors) '
