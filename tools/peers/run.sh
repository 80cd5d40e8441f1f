#!/usr/bin/env bash
# tools/peers/run.sh — llmint8 against llama.cpp, PyTorch + transformers and CTranslate2 on the
# same random-weight checkpoint, one interleaved run, one markdown table (tools/peers/README.md).
#
#   tools/peers/run.sh [--shape opt-1.3b|bloom-560m] [--threads N] [--rounds N] [--only LIST]
#                      [--no-batch] [--json FILE]
#
# Defaults: opt-1.3b dimensions (in BLOOM's architecture), 2 threads, 3 rounds. Needs a build
# (build/llmint8, or $BUILD_DIR/llmint8) and PyPI for the first run: the virtualenv
# (~/.cache/llmint8-peers, or $PEERS_VENV) is made by tools/peers/setup.sh and kept. The
# checkpoint, GGUF files and CTranslate2 models are kept in build-peers/ ($PEERS_WORK), about
# 7 GB for opt-1.3b. Exit status: 0 done; 1 a runtime failed; 77 skipped (no build, or the
# peers could not be installed), after a line "peers: skipped (why)".
set -uo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD_DIR:-build}
venv=${PEERS_VENV:-$HOME/.cache/llmint8-peers}
skip() { echo "peers: skipped ($*)"; exit 77; }

[[ -x $build/llmint8 ]] || skip "no $build/llmint8: build first (meson setup build -Dcuda=disabled && ninja -C build)"
tools/peers/setup.sh "$venv"
case $? in
  0) ;;
  77) skip "the peers could not be installed from PyPI (see above)" ;;
  *) echo "peers: setup.sh failed"; exit 1 ;;
esac
echo "peers: $(uptime)" >&2
exec "$venv/bin/python" tools/peers/peers.py table --llmint8 "$build/llmint8" \
  --work "${PEERS_WORK:-build-peers}" "$@"
