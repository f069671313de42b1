#!/usr/bin/env bash
# Builds the engine (scheduler, session manager, stores, kernels) with clang + ThreadSanitizer
# into build-tsan/ and runs the engine-level tests there:  scripts/tsan.sh [ctest args]
# EngineConcurrencyTest drives the engine from many client threads through its C++ API; the
# scheduler, rewind history, log and Redis store tests run too, the model runner's tests (slot
# operations on other threads while steps run), the Generate event queue's and the completion queue's. The gRPC-level tests are left
# out: Debian's gRPC is not instrumented and hands messages between its threads through
# synchronisation TSan cannot see (every report there is inside gRPC). LibTorch's intra-op
# threads are limited to one (OMP_NUM_THREADS=1) so that tensor work stays on threads TSan sees.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${TITANS_TSAN_DIR:-build-tsan}"
if [ ! -f "$dir/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DTITANS_CUDA_KERNELS=OFF \
    -DCMAKE_CXX_FLAGS="-fsanitize=thread -fno-omit-frame-pointer" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" \
    -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread"
fi
cmake --build "$dir" -j "${TITANS_BUILD_JOBS:-2}" -- server_tests storage_tests model_tests
cd "$dir"
ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(pwd)/../scripts/tsan.supp" \
  ctest --output-on-failure -j "${TITANS_TEST_JOBS:-2}" -R "^(EngineConcurrencyTest|RewindHistory|PlanStep|RedisStoreTest|WalTest|ModelRunner|GenerateEventQueue|CompletionQueue)\." "$@"
