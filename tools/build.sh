#!/usr/bin/env bash
# Installs the dependencies (Debian packages), configures ./build on first use and builds.
# Extra arguments go to `meson setup` (e.g. -Dcuda=disabled) when ./build is first made.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -d /usr/local/cuda/bin ]] && export PATH="$PATH:/usr/local/cuda/bin"
tools/install-deps.sh
[[ -f build/build.ninja ]] || meson setup build "$@"
ninja -C build
