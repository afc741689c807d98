#!/usr/bin/env bash
# Creates .venv and installs the project into it; serve.sh and test.sh run it first.
# Usage: scripts/bootstrap.sh [extra]   (extra = "test" also installs the test clients and
# the Kubernetes API emulator, emulator/, a distribution of its own)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($python --version)" >&2
  "$python" -m venv .venv
fi
spec=(-e .)
[ "${1:-}" = "test" ] && spec=(-e ".[test]" -e "./emulator[client]")
echo "bootstrap: installing ${spec[*]} into .venv" >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${spec[@]}" 2>&1 \
  | grep -v "^WARNING: Location" || true
