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
$PIP install -q -e ".[all]"
for req in requirements/*.txt; do
  grep -qvE '^\s*(#|$)' "$req" || continue
  $PIP install -q --no-deps --require-hashes -r "$req"
done
echo "slmforge installed in $VENV"
