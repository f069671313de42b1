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
// SumTree (linear_lanes.h) in registers, the same additions in the same order:
// h[i] = l[i] + l[i + 8], q[i] = h[i] + h[i + 4], (q[0] + q[2]) + (q[1] + q[3]).
inline float Sum(Lanes v) {
  const __m256 h = _mm256_add_ps(v.lo, v.hi);
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  const __m128 ab = _mm_add_ps(q, _mm_movehl_ps(q, q));  // [q0 + q2, q1 + q3, ...]
  return _mm_cvtss_f32(_mm_add_ss(ab, _mm_shuffle_ps(ab, ab, 1)));
}
// Two rows by two columns: 8 accumulator registers, 4 for the X rows, 2 for a W chunk; a
// single row takes four columns (8 + 2 + 2).
constexpr int kTileRows = 2, kTileCols = 2, kRowCols = 4;
}  // namespace
}  // namespace titans::kernels::avx2

#define TITANS_KERNEL_ISA avx2
#include "kernels/linear_impl.h"
