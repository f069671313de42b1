#include "kernels/linear.h"

#include <algorithm>

#include "kernels/cpu_isa.h"
#include "kernels/thread_pool.h"

namespace titans::kernels {

#define TITANS_DECLARE_LINEAR(isa)                                                       \
  namespace isa {                                                                        \
  void LinearBlock(const float* x, int64_t k_dim, const float* w, int64_t n, int64_t m0, \
                   int64_t m1, int64_t j0, int64_t j1, float* y);                        \
  }
TITANS_DECLARE_LINEAR(avx512)
TITANS_DECLARE_LINEAR(avx2)
TITANS_DECLARE_LINEAR(generic)
#undef TITANS_DECLARE_LINEAR

namespace {

using BlockFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t,
                         int64_t, float*);

// The build of `isa`, or nullptr where this CPU lacks it (or the name is unknown).
BlockFn IsaBlock(const std::string& isa) {
  return PickIsaBuild<BlockFn>(isa, &avx512::LinearBlock, &avx2::LinearBlock,
                               &generic::LinearBlock);
}

BlockFn BestBlock() {
  static const BlockFn best = IsaBlock(BestCpuIsa());
  return best;
}

void Run(BlockFn block, const float* x, int64_t m, int64_t k_dim, const float* w, int64_t n,
         float* y) {
  if (m <= 0 || n <= 0) return;
  // Split columns (whole weight rows per thread: each thread streams its share of W once) when
  // there are enough, else rows. Either way each element is computed by one Tile call.
  ThreadPool& pool = ThreadPool::Default();
  const int64_t work = m * n * k_dim;
  // Waking the pool costs tens of microseconds: below ~4M multiply-adds one thread is faster.
  const int parts = work < (int64_t{1} << 22) ? 1 : pool.size();
  if (parts == 1) {
    block(x, k_dim, w, n, 0, m, 0, n, y);
  } else if (n >= 16 * parts) {
    const int64_t col_groups = (n + 3) / 4;  // keep 4-column tiles whole
    pool.ParallelFor(col_groups, parts, [&](int64_t b, int64_t e) {
      block(x, k_dim, w, n, 0, m, 4 * b, std::min(n, 4 * e), y);
    });
  } else {
    pool.ParallelFor(m, parts, [&](int64_t b, int64_t e) { block(x, k_dim, w, n, b, e, 0, n, y); });
  }
}

}  // namespace

void InvariantLinear(const float* x, int64_t m, int64_t k_dim, const float* w, int64_t n,
                     float* y) {
  Run(BestBlock(), x, m, k_dim, w, n, y);
}

bool InvariantLinearOnIsa(const std::string& isa, const float* x, int64_t m, int64_t k_dim,
                          const float* w, int64_t n, float* y) {
  BlockFn block = IsaBlock(isa);
  if (!block) return false;
  Run(block, x, m, k_dim, w, n, y);
  return true;
}

}  // namespace titans::kernels
