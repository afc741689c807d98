#!/usr/bin/env bash
# Creates .venv-sdk with the real Flyte SDK (PyPI `flyte`) at the pinned version, for the
# SDK interop tests (tests/interop/test_sdk_*.py drive tests/support/sdk/*.py with .venv-sdk/bin/python).
#
# A separate venv because the SDK pins versions that conflict with the main one:
# flyte 2.12.1 wants connectrpc<0.11 and flyteidl2==2.0.51 (main: connectrpc 0.13,
# flyteidl2 2.0.53). Idempotent: does nothing when .venv-sdk already has these pins.
# Change a pin here and the next run reinstalls.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=.venv-sdk

# The versions under test; docs/sdk-interop.md records what was found with them.
pins=(
  "flyte==2.12.1"
  "flyteidl2==2.0.51"   # what flyte 2.12.1 pins
  "connectrpc==0.10.1"  # newest allowed by flyte 2.12.1 (connectrpc<0.11,>=0.9.0)
)

stamp="$venv/.sdk-pins"
want=$(printf '%s\n' "${pins[@]}")
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "sdk-venv: creating $venv with $($python --version)" >&2
  "$python" -m venv "$venv"
fi
echo "sdk-venv: installing ${pins[*]} into $venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}" 2>&1 \
  | grep -v "^WARNING: Location" || true
"$venv/bin/python" -c "import flyte, connectrpc, flyteidl2" # fail here, not in the tests
printf '%s\n' "$want" > "$stamp"
