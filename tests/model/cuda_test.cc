// CUDA parity: the same model on CPU and GPU gives the same logits and state. Skips cleanly where
// this LibTorch has no CUDA or no GPU is visible.
#include <gtest/gtest.h>

#include "tests/model/model_test_util.h"

namespace titans {
namespace {

using testing::RandomTokens;
using testing::TinyConfig;

TEST(Cuda, MatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device in this build or machine";
  for (Variant v : {Variant::kMAC, Variant::kMAG, Variant::kMAL, Variant::kLMM}) {
    auto cpu = TitansModel::CreateRandom(TinyConfig(v), 3);
    LoadOptions gpu_opts;
    gpu_opts.device = "cuda";
    auto gpu = TitansModel::CreateRandom(TinyConfig(v), 3, gpu_opts);
    ASSERT_TRUE(cpu.ok() && gpu.ok()) << gpu.status();
    at::NoGradGuard no_grad;
    SessionState a = (*cpu)->NewState(), b = (*gpu)->NewState();
    at::Tensor tokens = RandomTokens(1, 40, 1);
    auto la = (*cpu)->Forward(&a, tokens, LogitsMode::kAll);
    auto lb = (*gpu)->Forward(&b, tokens, LogitsMode::kAll);
    ASSERT_TRUE(la.ok() && lb.ok()) << lb.status();
    // TF32 may be on for GPU matmuls: 1e-2 absolute on logits ~10.
    EXPECT_LT((*la - lb->to(at::kCPU)).abs().max().item<double>(), 1e-2);
  }
}

}  // namespace
}  // namespace titans
