// The batch-invariant linear kernel on AVX2 + FMA: 16 lanes as two 8-wide registers.
#include <immintrin.h>

#include <cstdint>

#include "kernels/linear_lanes.h"

namespace titans::kernels::avx2 {
namespace {
struct Lanes {
  __m256 lo, hi;
};
inline Lanes Zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline Lanes Load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline Lanes LoadTail(const float* p, int n) {
  alignas(32) float buf[16] = {};
  for (int i = 0; i < n; ++i) buf[i] = p[i];
  return Load(buf);
}
inline Lanes Fma(Lanes a, Lanes b, Lanes acc) {
  return {_mm256_fmadd_ps(a.lo, b.lo, acc.lo), _mm256_fmadd_ps(a.hi, b.hi, acc.hi)};
}
inline float Sum(Lanes v) {
  alignas(32) float l[16];
  _mm256_store_ps(l, v.lo);
  _mm256_store_ps(l + 8, v.hi);
  return SumTree(l);
}
}  // namespace
}  // namespace titans::kernels::avx2

#define TITANS_KERNEL_ISA avx2
#include "kernels/linear_impl.h"
