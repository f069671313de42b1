#!/usr/bin/env bash
# Installs the built server, its tools and the default model into a self-contained prefix:
#   scripts/install.sh PREFIX        (after scripts/build.sh; the Dockerfile uses it)
#   PREFIX/bin/{titans-server,titans-cli,titans-generate,titans-init-model,libtitans_sentencepiece.so}
#   PREFIX/models/default/           the built-in default model
#   PREFIX/share/titans/             dashboards, alert rules, the .proto
# Nothing outside PREFIX is written; the binaries find the SentencePiece module next to themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="${1:?usage: scripts/install.sh PREFIX}"
build="${TITANS_BUILD_DIR:-build}"
mkdir -p "$prefix/bin" "$prefix/models" "$prefix/share/titans"
for f in server/titans-server tools/titans-cli tools/titans-generate tools/titans-init-model \
         model/libtitans_sentencepiece.so; do
  install -m 0755 "$build/$f" "$prefix/bin/"
done
rm -rf "$prefix/models/default"
cp -r models/default "$prefix/models/default"
cp -r deploy/grafana deploy/prometheus proto "$prefix/share/titans/"
echo "installed into $prefix"
