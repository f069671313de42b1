#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) into build-fuzz/ and runs each for a bounded
# time:  scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 20; the CI run). Corpora are kept in
# build-fuzz/corpus/<target>; a crash leaves its input in build-fuzz/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
dir="${TITANS_FUZZ_DIR:-build-fuzz}"
if [ ! -f "$dir/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DTITANS_FUZZ=ON -DTITANS_BUILD_TESTS=OFF -DTITANS_BUILD_SERVER=OFF -DTITANS_CUDA_KERNELS=OFF
fi
targets=(config safetensors session_state wal tokenizer sampling session_records)
cmake --build "$dir" -j "${TITANS_BUILD_JOBS:-2}" -- $(printf '%s_fuzz ' "${targets[@]}")
passed=0
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$dir/corpus/$t"
  if [ "$t" = config ] && [ -z "$(ls -A "$dir/corpus/$t")" ]; then
    cp models/default/config.json "$dir/corpus/$t/seed.json"
  fi
  echo "== fuzz $t for ${seconds}s"
  rc=0
  (cd "$dir" && ASAN_OPTIONS=detect_leaks=0 "tests/fuzz/${t}_fuzz" -max_total_time="$seconds" \
      -rss_limit_mb=4096 -max_len=8192 -print_final_stats=1 "corpus/$t" > "fuzz-$t.log" 2>&1) ||
    rc=$?
  grep -E "^(stat::number_of_executed_units|SUMMARY|==[0-9]+==ERROR)|runtime error" \
    "$dir/fuzz-$t.log" || true
  if [ "$rc" -ne 0 ]; then
    failed=$((failed + 1))
    echo "fuzz $t: FAILED (exit $rc; see $dir/fuzz-$t.log)"
  else
    passed=$((passed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
