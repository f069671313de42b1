#include "kernels/memory_kernel.h"

#include <atomic>
#include <chrono>

#include "kernels/cpu_isa.h"
#include "kernels/thread_pool.h"

namespace titans::kernels {

// One RunTasks per ISA, from memory_kernel_impl.h compiled with different target flags.
namespace avx512 {
void RunTasks(const MemoryShape&, const MemoryTask*, int64_t, int64_t);
}
namespace avx2 {
void RunTasks(const MemoryShape&, const MemoryTask*, int64_t, int64_t);
}
namespace generic {
void RunTasks(const MemoryShape&, const MemoryTask*, int64_t, int64_t);
}

namespace {

using RunFn = void (*)(const MemoryShape&, const MemoryTask*, int64_t, int64_t);

// The build of `isa`, or nullptr where this CPU lacks it (or the name is unknown).
RunFn IsaRun(const std::string& isa) {
  return PickIsaBuild<RunFn>(isa, &avx512::RunTasks, &avx2::RunTasks, &generic::RunTasks);
}

RunFn ActiveRun() {
  static const RunFn run = IsaRun(BestCpuIsa());
  return run;
}

std::atomic<int64_t> kernel_nanos{0};

}  // namespace

int64_t MemoryKernelNanos() { return kernel_nanos.load(std::memory_order_relaxed); }
void AddMemoryKernelNanos(int64_t nanos) {
  kernel_nanos.fetch_add(nanos, std::memory_order_relaxed);
}

void RunMemoryTasks(const MemoryShape& shape, const MemoryTask* tasks, int64_t count,
                    int num_threads) {
  const auto start = std::chrono::steady_clock::now();
  const RunFn run = ActiveRun();
  ThreadPool& pool = ThreadPool::Default();
  pool.ParallelFor(count, num_threads > 0 ? num_threads : pool.size(),
                   [&](int64_t begin, int64_t end) { run(shape, tasks, begin, end); });
  AddMemoryKernelNanos(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
          .count());
}

std::string MemoryKernelIsa() { return BestCpuIsa(); }

bool RunMemoryTasksOnIsa(const std::string& isa, const MemoryShape& shape, const MemoryTask* tasks,
                         int64_t count) {
  const RunFn run = IsaRun(isa);
  if (run == nullptr) return false;
  run(shape, tasks, 0, count);
  return true;
}

double MemoryTaskFlops(const MemoryShape& s, int pending_in, int n) {
  double flops = 0;
  int p = pending_in;
  for (int t0 = 0; t0 < n;) {
    const int cnt = std::min(n - t0, s.chunk - p), m = p + cnt;
    for (int l = 0; l < s.depth; ++l) {
      const double w = static_cast<double>(s.weight_size(l));
      flops += 2.0 * cnt * w;                                          // keys forward
      if (l + 1 < s.depth) flops += 2.0 * cnt * s.weight_size(l + 1);  // deltas backward
      flops += 2.0 * 2.0 * cnt * w;                                    // queries: H W^T and H S^T
      flops += 2.0 * cnt * m * (s.in(l) + s.out(l));                   // scores and scores * Delta
      if (m == s.chunk) flops += 2.0 * 2.0 * m * w;                    // close: W_b and S_b
    }
    p = m == s.chunk ? 0 : m;
    t0 += cnt;
  }
  return flops;
}

}  // namespace titans::kernels
