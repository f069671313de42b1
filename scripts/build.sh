#!/usr/bin/env bash
# Configures and builds the project into build/ (Release with debug info, Ninja).
# Extra arguments are passed to the build (e.g. target names).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${TITANS_BUILD_DIR:-build}"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${TITANS_CMAKE_ARGS:-}
fi
# Two jobs: each LibTorch translation unit needs ~1 GB of compiler memory.
cmake --build "$BUILD_DIR" -j "${TITANS_BUILD_JOBS:-2}" -- "$@"
