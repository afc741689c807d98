#!/usr/bin/env bash
# Regenerates the Python code of the test .proto files into tests/support/gen (the
# console's, under proto/actions, go into the package: scripts/gen-console-proto.sh).
# tests/test_generated_fresh.py fails when the committed output differs from this.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-tests/support/gen}
mkdir -p "$out"
python -m grpc_tools.protoc -I proto --python_out="$out" --pyi_out="$out" \
  $(find proto -name '*.proto' -not -path 'proto/actions/*' | sort)
find "$out" -mindepth 1 -type d -exec touch {}/__init__.py \;
