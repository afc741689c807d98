#!/usr/bin/env bash
# Installs the service and runs it on the embedded store (127.0.0.1:8091 by default).
# Extra arguments go to `actions-service serve` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/actions-service serve "$@"
