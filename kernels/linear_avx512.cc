// The batch-invariant linear kernel on AVX-512 (flags in kernels/CMakeLists.txt).
#include <immintrin.h>

#include <cstdint>

#include "kernels/linear_lanes.h"

namespace titans::kernels::avx512 {
namespace {
using Lanes = __m512;
inline Lanes Zero() { return _mm512_setzero_ps(); }
inline Lanes Load(const float* p) { return _mm512_loadu_ps(p); }
inline Lanes LoadTail(const float* p, int n) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
}
inline Lanes Fma(Lanes a, Lanes b, Lanes acc) { return _mm512_fmadd_ps(a, b, acc); }
inline float Sum(Lanes v) {
  alignas(64) float l[16];
  _mm512_store_ps(l, v);
  return SumTree(l);
}
// Four rows by four columns: 16 accumulator registers of the 32, 4 for the X rows, 1 for W.
constexpr int kTileRows = 4, kTileCols = 4, kRowCols = 4;
}  // namespace
}  // namespace titans::kernels::avx512

#define TITANS_KERNEL_ISA avx512
#include "kernels/linear_impl.h"
