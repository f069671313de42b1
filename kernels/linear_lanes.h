// The one summation order of the linear kernel's 16 lanes, shared by every ISA build:
// 16 -> 8 -> 4 -> 2 -> 1, pairing lane i with lane i + half. Not a public header.
#ifndef TITANS_KERNELS_LINEAR_LANES_H_
#define TITANS_KERNELS_LINEAR_LANES_H_

namespace titans::kernels {

inline float SumTree(const float* l) {
  float h[8], q[4];
  for (int i = 0; i < 8; ++i) h[i] = l[i] + l[i + 8];
  for (int i = 0; i < 4; ++i) q[i] = h[i] + h[i + 4];
  const float a = q[0] + q[2], b = q[1] + q[3];
  return a + b;
}

}  // namespace titans::kernels

#endif  // TITANS_KERNELS_LINEAR_LANES_H_
