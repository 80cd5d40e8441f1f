#!/usr/bin/env bash
# tools/fetch_gpu_debs.sh — run HERE (the development machine, with apt), before using the
# lent GPU machine: downloads the .deb files of the libraries llmint8 needs that the GPU
# machine's image lacks (cJSON, PCRE2, and pkg-config to find them) into .debs/ (ignored
# by git). tools/gpu_check.sh unpacks them there with `dpkg -x`; the device tool must be
# told to carry the folder:  run(command="tools/gpu_check.sh", carry=[".debs"]).
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(libcjson1 libcjson-dev libpcre2-8-0 libpcre2-dev pkgconf pkgconf-bin libpkgconf3)
mkdir -p .debs
cd .debs
rm -f ./*.deb
# as root, apt cannot drop to its _apt user for a folder it cannot read: download as root
sandbox=(); [[ $(id -u) -eq 0 ]] && sandbox=(-o APT::Sandbox::User=root)
apt-get "${sandbox[@]}" download "${pkgs[@]}"
ls -l
echo "fetch_gpu_debs: ${#pkgs[@]} packages in $(pwd)"
