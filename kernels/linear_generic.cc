// The batch-invariant linear kernel without vector extensions: 16 scalar lanes with std::fma
// (the same per-lane arithmetic and summation tree as the vector builds, just slower).
#include <cmath>
#include <cstdint>

#include "kernels/linear_lanes.h"

namespace titans::kernels::generic {
namespace {
struct Lanes {
  float v[16];
};
inline Lanes Zero() { return Lanes{}; }
inline Lanes Load(const float* p) {
  Lanes l;
  for (int i = 0; i < 16; ++i) l.v[i] = p[i];
  return l;
}
inline Lanes LoadTail(const float* p, int n) {
  Lanes l{};
  for (int i = 0; i < n; ++i) l.v[i] = p[i];
  return l;
}
inline Lanes Fma(Lanes a, Lanes b, Lanes acc) {
  for (int i = 0; i < 16; ++i) acc.v[i] = std::fma(a.v[i], b.v[i], acc.v[i]);
  return acc;
}
inline float Sum(const Lanes& l) { return SumTree(l.v); }
constexpr int kTileRows = 4, kTileCols = 4, kRowCols = 4;
}  // namespace
}  // namespace titans::kernels::generic

#define TITANS_KERNEL_ISA generic
#include "kernels/linear_impl.h"
