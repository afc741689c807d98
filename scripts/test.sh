#!/usr/bin/env bash
# Installs everything the tests need (Python test clients, npm clients) and runs the suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
scripts/sdk-venv.sh  # .venv-sdk: the real Flyte SDK for tests/interop/test_sdk_*.py
if [ -f tests/interop/package.json ]; then
  echo "test: installing npm clients (tests/interop)" >&2
  (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
fi
# Debian tools the tests drive beyond curl and kubectl (which the machine image has):
# h2load (nghttp2-client). Installed only when missing; needs root, as CI has.
if ! command -v h2load >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "test: installing Debian nghttp2-client (h2load)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null
  else
    echo "test: h2load missing and not root; its test will be skipped (fails under CI)" >&2
  fi
fi
# zsh: tests/actions/test_completion_shells.py runs the generated completion script in it.
if ! command -v zsh >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "test: installing Debian zsh" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zsh >/dev/null
  else
    echo "test: zsh missing and not root; its completion tests will be skipped (fail under CI)" >&2
  fi
fi
# chromium and chromedriver: tests/actions/test_console_browser.py drives the web console.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "test: installing Debian chromium and chromium-driver" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "test: chromium missing and not root; the browser tests will be skipped (fail under CI)" >&2
  fi
fi
echo "test: ruff" >&2
.venv/bin/ruff check src tests bench scripts emulator
.venv/bin/ruff format --check --quiet src tests bench scripts emulator
echo "test: mypy" >&2
.venv/bin/mypy  # strict; what it checks is [tool.mypy] in pyproject.toml
echo "test: pytest" >&2
exec .venv/bin/python -m pytest "$@"
