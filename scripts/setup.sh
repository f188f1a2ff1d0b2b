#!/usr/bin/env bash
# Create the project venv and install slmforge with every extra (idempotent).
# torch is installed first and pinned (2.13.0 CPU wheel): an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q torch==2.13.0

# llama.cpp (llama-cpp-python builds it from source: measured 7 min 28 s on 2 cores) is built once per machine
# into a wheel folder and installed from there afterwards.
LLAMA_VERSION=0.3.36
WHEELS="${SLMFORGE_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/slmforge/wheels}"
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-python') != '$LLAMA_VERSION')" 2>/dev/null; then
  wheel=$(ls "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    for tool in cmake c++; do
      command -v "$tool" >/dev/null || { echo "building llama-cpp-python needs '$tool' (Debian: bash scripts/system_deps.sh)" >&2; exit 1; }
    done
    echo "building llama-cpp-python==$LLAMA_VERSION (llama.cpp from source, once per machine; ~7.5 min on 2 cores) into $WHEELS"
    mkdir -p "$WHEELS"
    $PIP wheel -q --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
    wheel=$(ls "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl | head -n1)
  fi
  $PIP install -q "$wheel"
fi
$PIP install -q -e ".[all]"
for req in requirements/*.txt; do
  grep -qvE '^\s*(#|$)' "$req" || continue
  $PIP install -q --no-deps --require-hashes -r "$req"
done
echo "slmforge installed in $VENV"
