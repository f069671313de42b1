// The CUDA memory kernel against the CPU kernel on the same tasks, and its batch invariance.
// Skips cleanly where the build has no CUDA kernels or the machine has no GPU.
#include "kernels/memory_kernel_cuda.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/memory_kernel.h"

#ifdef TITANS_WITH_CUDA_KERNELS
#include <cuda_runtime_api.h>
#endif

namespace titans::kernels {
namespace {

// All arrays of a set of tasks in one float buffer, addressed by offsets, so the same layout can
// live on the host or the device.
struct Arena {
  std::vector<float> data;
  struct Offsets {
    int64_t w[kMaxMemoryDepth], s[kMaxMemoryDepth], z[kMaxMemoryDepth], d[kMaxMemoryDepth];
    int64_t gates, k, v, q, lk, le, th, y;
    int pending, n;
  };
  std::vector<Offsets> tasks;

  int64_t Take(int64_t floats) {
    const int64_t at = static_cast<int64_t>(data.size());
    data.resize(data.size() + floats);
    return at;
  }

  void Add(const MemoryShape& s, int pending, int n, std::mt19937& rng) {
    std::normal_distribution<float> normal;
    auto fill = [&](int64_t at, int64_t count, float scale, float shift) {
      for (int64_t i = 0; i < count; ++i) data[at + i] = normal(rng) * scale + shift;
    };
    Offsets o{};
    for (int l = 0; l < s.depth; ++l) {
      o.w[l] = Take(s.weight_size(l));
      fill(o.w[l], s.weight_size(l), 1.0f / std::sqrt(float(s.in(l))), 0);
      o.s[l] = Take(s.weight_size(l));
      fill(o.s[l], s.weight_size(l), 0.01f, 0);
      o.z[l] = Take(int64_t{s.chunk} * s.in(l));
      fill(o.z[l], int64_t{s.chunk} * s.in(l), 0.3f, 0);
      o.d[l] = Take(int64_t{s.chunk} * s.out(l));
      fill(o.d[l], int64_t{s.chunk} * s.out(l), 0.3f, 0);
    }
    o.gates = Take(int64_t{s.chunk} * 3);
    for (int j = 0; j < s.chunk; ++j) {
      data[o.gates + 3 * j] = -0.02f;
      data[o.gates + 3 * j + 1] = -0.1f;
      data[o.gates + 3 * j + 2] = 0.05f;
    }
    for (int64_t* x : {&o.k, &o.v, &o.q, &o.y}) *x = Take(int64_t{n} * s.head_dim);
    for (int64_t* x : {&o.k, &o.v, &o.q}) fill(*x, int64_t{n} * s.head_dim, 0.2f, 0);
    o.lk = Take(n);
    fill(o.lk, n, 0.01f, -0.03f);
    o.le = Take(n);
    fill(o.le, n, 0.01f, -0.1f);
    o.th = Take(n);
    fill(o.th, n, 0.01f, 0.05f);
    o.pending = pending;
    o.n = n;
    tasks.push_back(o);
  }

  std::vector<MemoryTask> Tasks(const MemoryShape& s, float* base) const {
    std::vector<MemoryTask> out;
    for (const Offsets& o : tasks) {
      MemoryTask t;
      for (int l = 0; l < s.depth; ++l) {
        t.weights_in[l] = t.weights_out[l] = base + o.w[l];
        t.momentum_in[l] = t.momentum_out[l] = base + o.s[l];
        t.pending_inputs_in[l] = t.pending_inputs_out[l] = base + o.z[l];
        t.pending_deltas_in[l] = t.pending_deltas_out[l] = base + o.d[l];
      }
      t.pending_gates_in = t.pending_gates_out = base + o.gates;
      t.pending_in = o.pending;
      t.n = o.n;
      t.keys = base + o.k;
      t.values = base + o.v;
      t.queries = base + o.q;
      t.kvq_stride = s.head_dim;
      t.log_keep = base + o.lk;
      t.log_eta = base + o.le;
      t.theta = base + o.th;
      t.gate_stride = 1;
      t.output = base + o.y;
      t.output_stride = s.head_dim;
      out.push_back(t);
    }
    return out;
  }
};

#ifdef TITANS_WITH_CUDA_KERNELS
bool HaveGpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

std::vector<float> RunOnGpu(const MemoryShape& s, const Arena& arena) {
  float* device = nullptr;
  const size_t bytes = arena.data.size() * sizeof(float);
  EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&device), bytes), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(device, arena.data.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
  std::vector<MemoryTask> tasks = arena.Tasks(s, device);
  EXPECT_EQ(RunMemoryTasksCuda(s, tasks.data(), static_cast<int64_t>(tasks.size()), nullptr), "");
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> out(arena.data.size());
  EXPECT_EQ(cudaMemcpy(out.data(), device, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(device);
  return out;
}
#endif

TEST(CudaKernel, MatchesCpuKernelAndIsBatchInvariant) {
#ifndef TITANS_WITH_CUDA_KERNELS
  GTEST_SKIP() << "this build has no CUDA kernels";
#else
  if (!HaveGpu()) GTEST_SKIP() << "no GPU on this machine";
  for (int depth = 1; depth <= 4; ++depth) {
    MemoryShape s;
    s.depth = depth;
    s.head_dim = 32;
    s.hidden = depth > 1 ? 128 : 32;
    s.chunk = 16;
    // Depth 2 with a weight bound low enough to act at every chunk close.
    if (depth == 2) s.max_weight_rms = 0.005f;
    std::mt19937 rng(depth);
    Arena arena;
    const int pendings[] = {0, 5, 15, 0, 3};
    const int lengths[] = {1, 11, 1, 37, 100};
    for (int i = 0; i < 5; ++i) arena.Add(s, pendings[i], lengths[i], rng);
    Arena cpu = arena;
    std::vector<MemoryTask> cpu_tasks = cpu.Tasks(s, cpu.data.data());
    RunMemoryTasks(s, cpu_tasks.data(), static_cast<int64_t>(cpu_tasks.size()), 1);
    std::vector<float> gpu = RunOnGpu(s, arena);
    double worst = 0, scale = 0;
    for (size_t i = 0; i < gpu.size(); ++i) {
      worst = std::max(worst, double(std::abs(gpu[i] - cpu.data[i])));
      scale = std::max(scale, double(std::abs(cpu.data[i])));
    }
    // Different summation orders and fast-math exp: 1e-4 relative to the largest value.
    EXPECT_LT(worst, 1e-4 * (1 + scale)) << "depth " << depth;

    // Task 1 alone on the GPU gives the same bits as in the batch.
    Arena single;
    single.data = arena.data;
    single.tasks = {arena.tasks[1]};
    std::vector<float> alone = RunOnGpu(s, single);
    const Arena::Offsets& o = arena.tasks[1];
    EXPECT_EQ(std::memcmp(alone.data() + o.y, gpu.data() + o.y, sizeof(float) * o.n * s.head_dim),
              0);
    EXPECT_EQ(
        std::memcmp(alone.data() + o.w[0], gpu.data() + o.w[0], sizeof(float) * s.weight_size(0)),
        0);
  }
#endif
}

TEST(CudaKernel, StubReportsAbsence) {
  if (CudaKernelsBuilt()) GTEST_SKIP() << "CUDA kernels are built";
  MemoryShape s;
  EXPECT_NE(RunMemoryTasksCuda(s, nullptr, 1, nullptr), "");
}

}  // namespace
}  // namespace titans::kernels
