// The batch-invariant linear kernel: against LibTorch in double precision (tolerance from fp32
// rounding), and bit-identical rows whatever the batch: alone, among others, at other positions,
// on every instruction set this CPU has, with edge shapes (K and N not multiples of 16 / 4).
#include "kernels/linear.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <cstring>

namespace titans::kernels {
namespace {

at::Tensor RunOn(const std::string& isa, const at::Tensor& x, const at::Tensor& w) {
  at::Tensor y = at::empty({x.size(0), w.size(0)});
  EXPECT_TRUE(InvariantLinearOnIsa(isa, x.data_ptr<float>(), x.size(0), x.size(1),
                                   w.data_ptr<float>(), w.size(0), y.data_ptr<float>()));
  return y;
}

std::vector<std::string> Isas() {
  std::vector<std::string> out;
  for (const char* isa : {"avx512", "avx2", "generic"}) {
    float one = 1, y = 0;
    if (InvariantLinearOnIsa(isa, &one, 1, 1, &one, 1, &y)) out.push_back(isa);
  }
  return out;
}

bool SameBits(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() &&
         std::memcmp(a.data_ptr<float>(), b.data_ptr<float>(), a.numel() * sizeof(float)) == 0;
}

TEST(InvariantLinear, MatchesLibTorchAndIsBatchInvariantOnEveryIsa) {
  at::manual_seed(3);
  ASSERT_FALSE(Isas().empty());
  for (const std::string& isa : Isas()) {
    for (auto [k, n] : std::vector<std::pair<int64_t, int64_t>>{
             {1, 1}, {7, 5}, {16, 4}, {64, 64}, {100, 77}, {128, 384}, {257, 130}}) {
      SCOPED_TRACE(isa + " k=" + std::to_string(k) + " n=" + std::to_string(n));
      const at::Tensor x = at::randn({37, k}), w = at::randn({n, k});
      const at::Tensor all = RunOn(isa, x, w);
      const at::Tensor ref = at::matmul(x.to(at::kDouble), w.to(at::kDouble).t());
      const double scale = std::sqrt(static_cast<double>(k));
      EXPECT_LT((all.to(at::kDouble) - ref).abs().max().item<double>(), 1e-5 * scale * 4);
      for (int64_t i : {0, 1, 3, 4, 17, 36}) {
        // Alone.
        EXPECT_TRUE(
            SameBits(RunOn(isa, x.slice(0, i, i + 1).contiguous(), w), all.slice(0, i, i + 1)))
            << "row " << i << " alone";
        // At another position among other rows.
        at::Tensor mixed = at::randn({9, k});
        mixed[5] = x[i];
        EXPECT_TRUE(SameBits(RunOn(isa, mixed, w).slice(0, 5, 6).contiguous(),
                             all.slice(0, i, i + 1).contiguous()))
            << "row " << i << " among others";
      }
      // A large batch takes the threaded paths (row and column splits).
      at::Tensor big = at::randn({300, k});
      big.slice(0, 100, 137).copy_(x);
      EXPECT_TRUE(SameBits(RunOn(isa, big, w).slice(0, 100, 137).contiguous(), all));
    }
  }
}

// Every ISA build runs the same per-element arithmetic (16 lanes of fused multiply-adds over k in
// order, the same summation tree), only with different tile shapes and registers, so all of them
// give the bits of the portable build. This pins any change to a build's tiles or summation.
TEST(InvariantLinear, EveryIsaGivesThePortableBuildsBits) {
  at::manual_seed(5);
  for (auto [m, k, n] : std::vector<std::array<int64_t, 3>>{
           {1, 128, 128}, {3, 33, 7}, {5, 128, 384}, {64, 384, 128}, {67, 257, 130}}) {
    const at::Tensor x = at::randn({m, k}), w = at::randn({n, k});
    const at::Tensor portable = RunOn("generic", x, w);
    for (const std::string& isa : Isas()) {
      EXPECT_TRUE(SameBits(RunOn(isa, x, w), portable))
          << isa << " m=" << m << " k=" << k << " n=" << n;
    }
  }
}

TEST(InvariantLinear, DefaultIsaAndEmptyShapes) {
  const at::Tensor x = at::randn({5, 33}), w = at::randn({9, 33});
  at::Tensor y = at::empty({5, 9});
  InvariantLinear(x.data_ptr<float>(), 5, 33, w.data_ptr<float>(), 9, y.data_ptr<float>());
  EXPECT_TRUE(SameBits(y, RunOn(Isas().front(), x, w)));
  InvariantLinear(x.data_ptr<float>(), 0, 33, w.data_ptr<float>(), 9, y.data_ptr<float>());
}

}  // namespace
}  // namespace titans::kernels
