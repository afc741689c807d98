#!/usr/bin/env bash
# Regenerates the Python code of the console's read API (proto/actions/console) into the
# package, under src/actions/_gen. tests/test_generated_fresh.py fails when
# the committed output differs from this.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-src/actions/_gen}
mkdir -p "$out"
python -m grpc_tools.protoc -I proto --python_out="$out" --pyi_out="$out" \
  $(find proto/actions -name '*.proto' | sort)
touch "$out/__init__.py"
find "$out" -mindepth 1 -type d -exec touch {}/__init__.py \;
