#!/usr/bin/env bash
# Debian packages the full test suite needs: redis-server (embedded Argilla), chromium (UI test), cmake and a C++
# compiler (llama-cpp-python builds llama.cpp from source once, when no cached wheel exists: scripts/setup.sh).
set -euo pipefail
PKGS="redis-server chromium chromium-driver cmake g++ make"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages:$missing - run: sudo apt-get install -y$missing" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
