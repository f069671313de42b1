#!/usr/bin/env bash
# Sets up (Debian packages), builds, and runs the main job on the shipped default model.
# Until the gRPC server lands this generates text from the model; arguments go to titans-generate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh titans-generate
exec "${TITANS_BUILD_DIR:-build}/tools/titans-generate" --model_dir models/default "$@"
