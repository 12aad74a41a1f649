#!/usr/bin/env bash
# Regenerates the Python stubs in generated/ from protos/; `--check` fails when they are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
out=generated
if [ "${1:-}" = "--check" ]; then out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
mkdir -p "$out"
"$PY" -m grpc_tools.protoc -Iprotos \
  --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  protos/llmproxy/v1/llmproxy.proto
touch "$out/llmproxy/v1/__init__.py"
if [ "${1:-}" = "--check" ]; then
  if ! diff -r -q -x __pycache__ "$out/llmproxy" generated/llmproxy; then
    echo "generated/ is stale: run scripts/gen_protos.sh" >&2; exit 1
  fi
  echo "generated/ is up to date"
fi
