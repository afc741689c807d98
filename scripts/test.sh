#!/usr/bin/env bash
# Installs everything the tests need (Python test clients, npm clients) and runs the suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
scripts/sdk-venv.sh  # .venv-sdk: the real Flyte SDK for tests/test_sdk_*.py
if [ -f tests/interop/package.json ]; then
  echo "test: installing npm clients (tests/interop)" >&2
  (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "test: ruff" >&2
.venv/bin/ruff check src tests bench scripts
echo "test: pytest" >&2
exec .venv/bin/python -m pytest "$@"
