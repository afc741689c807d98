#!/usr/bin/env bash
# Creates .venv and installs the project into it. Sourced by serve.sh and test.sh.
# Usage: scripts/bootstrap.sh [extra]   (extra = "test" installs the test clients too)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($python --version)" >&2
  "$python" -m venv .venv
fi
spec="."
[ "${1:-}" = "test" ] && spec=".[test]"
echo "bootstrap: installing $spec into .venv" >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec" 2>&1 \
  | grep -v "^WARNING: Location" || true
