#!/usr/bin/env bash
# Builds model/ and kernels/ against the GPU machine's CUDA-enabled LibTorch (PyTorch's CMake
# config) and runs the GPU tests and the kernel benchmark. Meant for the device machine:
#   scripts/gpu-check.sh [OUT_DIR]
# It installs nothing; the server (gRPC) is not built. Results go to OUT_DIR (default: $OUT or
# ./gpu-results): build log, test output, benchmark JSON and console output.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-results}}"
mkdir -p "$out"
exec > >(tee "$out/gpu-check.log") 2>&1

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
nproc
prefix=$(python3 -c 'import torch.utils; print(torch.utils.cmake_prefix_path)') || {
  echo "no PyTorch with a CMake config in python3"; exit 1; }
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

echo "== configure"
cmake -S . -B build-gpu -G "$(command -v ninja >/dev/null && echo Ninja || echo 'Unix Makefiles')" \
  -DCMAKE_BUILD_TYPE=Release -DTITANS_CUDA=ON -DTITANS_BUILD_SERVER=OFF \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_CUDA_COMPILER="${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}" \
  || exit 1
echo "== build"
cmake --build build-gpu -j "$(nproc)" --target kernel_tests model_tests titans-bench-kernels || exit 1

echo "== GPU tests"
build-gpu/tests/kernel_tests --gtest_filter='Cuda*:*Cuda*' | tee "$out/kernel-tests.txt"
build-gpu/tests/model_tests --gtest_filter='Cuda*' | tee "$out/model-tests.txt"
echo "== all kernel and model tests on this machine"
build-gpu/tests/kernel_tests --gtest_brief=1 | tail -3
build-gpu/tests/model_tests --gtest_brief=1 | tail -3
echo "== kernel benchmark (CPU side of this machine)"
build-gpu/tools/titans-bench-kernels --benchmark_min_time=0.1 \
  --benchmark_out="$out/kernels.json" --benchmark_out_format=json | tee "$out/kernels.txt" | tail -15
