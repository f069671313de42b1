#!/usr/bin/env bash
# Generates the titans Python package's gRPC stubs (python/titans/v1/titans_pb2{,_grpc}.py) from
# proto/titans/v1/titans.proto with Debian's protoc and grpc_python_plugin. The stubs are
# committed so that `pip install ./python` needs no compiler; the CTest python_stubs_match_proto
# runs this script with --check and fails when they differ from what the proto generates.
#
#   scripts/generate-python-stubs.sh           # rewrite the committed stubs
#   scripts/generate-python-stubs.sh --check   # exit 1 if they are out of date
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
protoc -Iproto --python_out="$out" --grpc_out="$out" \
  --plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin proto/titans/v1/titans.proto
for f in titans_pb2.py titans_pb2_grpc.py; do
  if [ "${1:-}" = --check ]; then
    if ! cmp -s "$out/titans/v1/$f" "python/titans/v1/$f"; then
      echo "python/titans/v1/$f does not match proto/titans/v1/titans.proto;" \
        "run scripts/generate-python-stubs.sh" >&2
      exit 1
    fi
  else
    cp "$out/titans/v1/$f" "python/titans/v1/$f"
  fi
done
[ "${1:-}" = --check ] && echo "python stubs match the proto"
exit 0
