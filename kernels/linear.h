// A batch-invariant linear layer for CPU inference: Y[M, N] = X[M, K] · W[N, K]^T (fp32,
// row-major, W in PyTorch's Linear layout).
//
// Every output element is computed the same way whatever the other rows are: a dot product of
// its X row and W row accumulated in 16 fixed lanes over k (one fused multiply-add per lane per
// 16-wide chunk, the tail zero-padded), then summed across lanes in a fixed tree. So a row's
// result is bit-identical whether it is computed alone or among any number of rows, at any
// position, with any thread split. BLAS GEMMs do not promise this (their blocking depends on M,
// and at small M they switch kernels): with them a session's results would depend on which other
// sessions shared its scheduler step, and crash recovery (which replays a session alone) would
// only be close, not exact.
//
// Compiled per instruction set (AVX-512, AVX2+FMA, generic) and chosen at run time like the
// memory kernel; results are the same across calls on one machine, not across ISAs.
// Thread safety: safe to call concurrently (work runs on ThreadPool::Default()).
#ifndef TITANS_KERNELS_LINEAR_H_
#define TITANS_KERNELS_LINEAR_H_

#include <cstdint>
#include <string>

namespace titans::kernels {

// y[m * n + j] = sum_k x[m * k_dim + k] * w[j * k_dim + k]. x, w, y must not overlap.
void InvariantLinear(const float* x, int64_t m, int64_t k_dim, const float* w, int64_t n, float* y);

// Same on a given ISA ("avx512", "avx2", "generic"); false if this CPU lacks it. For tests.
bool InvariantLinearOnIsa(const std::string& isa, const float* x, int64_t m, int64_t k_dim,
                          const float* w, int64_t n, float* y);

}  // namespace titans::kernels

#endif  // TITANS_KERNELS_LINEAR_H_
