#!/usr/bin/env bash
# Sets up (Debian packages), builds everything, and runs every test through CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
cd "${TITANS_BUILD_DIR:-build}"
ctest --output-on-failure -j "${TITANS_TEST_JOBS:-2}" "$@"
cd - > /dev/null
# Bounded fuzzing of the parsers and decoders (libFuzzer + ASan + UBSan), the GoogleTest suites
# again under ASan + UBSan, and the engine's concurrency tests under ThreadSanitizer.
# TITANS_QUICK=1 skips these (a local inner loop).
if [ "${TITANS_QUICK:-0}" != 1 ]; then
  scripts/fuzz.sh "${TITANS_FUZZ_SECONDS:-15}"
  scripts/sanitize.sh
  scripts/tsan.sh
fi
