#!/usr/bin/env bash
# Sets up (Debian packages), builds, and starts titans-server on the shipped default model
# (port 50051, state in ./state). Arguments are passed to titans-server (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh titans-server titans-cli
mkdir -p state
exec "${TITANS_BUILD_DIR:-build}/server/titans-server" --model_dir models/default \
  --state_dir state "$@"
