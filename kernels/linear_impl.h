// The batch-invariant linear kernel, written once and compiled per instruction set (see
// linear.h): each linear_<isa>.cc defines TITANS_KERNEL_ISA and the lane operations, then
// includes this file. Not a public header.
//
// Lanes: a value of type Lanes holds 16 floats. The ISA file provides
//   Lanes Zero();  Lanes Load(const float* p);            // 16 floats
//   Lanes LoadTail(const float* p, int n);                 // n < 16 floats, the rest zero
//   Lanes Fma(Lanes a, Lanes b, Lanes acc);                // acc + a * b, one rounding per lane
//   float Sum(Lanes v);                                    // fixed-order tree over the 16 lanes
// and the tile shape that fits its register file:
//   constexpr int kTileRows, kTileCols;  // rows of X x columns of Y per tile
//   constexpr int kRowCols;              // columns per tile of a single leftover row
// (AVX2 holds a Lanes in two of its 16 registers, so its tiles are smaller than AVX-512's.)
// The tile shape changes only how many accumulators are live at once, never the operations
// on any one of them, so every shape gives the same bits.
#include <algorithm>

#include "kernels/linear.h"

namespace titans::kernels::TITANS_KERNEL_ISA {
namespace {

// An R x C tile of Y. Each element's accumulator sees exactly the same sequence of operations
// whatever R and C are, so edge tiles give the same bits as full ones.
template <int R, int C>
inline void Tile(const float* x, int64_t k_dim, const float* w, float* y, int64_t n) {
  Lanes acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = Zero();
  int64_t k = 0;
  // Column by column: one W chunk is live at a time (the registers go to the accumulators).
  for (; k + 16 <= k_dim; k += 16) {
    Lanes xv[R];
    for (int r = 0; r < R; ++r) xv[r] = Load(x + r * k_dim + k);
    for (int c = 0; c < C; ++c) {
      const Lanes wv = Load(w + c * k_dim + k);
      for (int r = 0; r < R; ++r) acc[r][c] = Fma(xv[r], wv, acc[r][c]);
    }
  }
  if (k < k_dim) {
    const int tail = static_cast<int>(k_dim - k);
    Lanes xv[R];
    for (int r = 0; r < R; ++r) xv[r] = LoadTail(x + r * k_dim + k, tail);
    for (int c = 0; c < C; ++c) {
      const Lanes wv = LoadTail(w + c * k_dim + k, tail);
      for (int r = 0; r < R; ++r) acc[r][c] = Fma(xv[r], wv, acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) y[r * n + c] = Sum(acc[r][c]);
}

template <int R>
inline void RowBlock(const float* x, int64_t k_dim, const float* w, int64_t n, int64_t j0,
                     int64_t j1, float* y) {
  constexpr int C = R == 1 ? kRowCols : kTileCols;
  int64_t j = j0;
  for (; j + C <= j1; j += C) Tile<R, C>(x, k_dim, w + j * k_dim, y + j, n);
  for (; j < j1; ++j) Tile<R, 1>(x, k_dim, w + j * k_dim, y + j, n);
}

}  // namespace

// Rows [m0, m1) x columns [j0, j1) of Y.
void LinearBlock(const float* x, int64_t k_dim, const float* w, int64_t n, int64_t m0, int64_t m1,
                 int64_t j0, int64_t j1, float* y) {
  int64_t m = m0;
  for (; m + kTileRows <= m1; m += kTileRows) {
    RowBlock<kTileRows>(x + m * k_dim, k_dim, w, n, j0, j1, y + m * n);
  }
  for (; m < m1; ++m) RowBlock<1>(x + m * k_dim, k_dim, w, n, j0, j1, y + m * n);
}

}  // namespace titans::kernels::TITANS_KERNEL_ISA
