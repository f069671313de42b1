// The memory weight bound (MemoryConfig::max_weight_rms): without it a run of near-identical
// keys makes the chunked update diverge (every gradient of a chunk is taken at its start weights,
// so they add up); with it the memory saturates and every output stays finite. The fused kernel
// and the LibTorch reference apply the bound identically.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <random>

#include "model/memory_math.h"
#include "tests/model/model_test_util.h"

namespace titans::testing {
namespace {

// Runs of one repeated byte, 1..40 long: what diverged before the bound existed.
std::vector<std::vector<int64_t>> RepeatedRuns(int runs, uint64_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int64_t>> out;
  for (int i = 0; i < runs; ++i) {
    out.emplace_back(1 + rng() % 40, 97 + rng() % 26);
  }
  return out;
}

double MaxWeightRms(const SessionState& s) {
  double worst = 0;
  for (const LayerState& layer : s.layers) {
    for (const at::Tensor& w : layer.memory.weights) {
      // Per group (head): RMS over the matrix.
      worst = std::max(worst, w.pow(2).mean({1, 2}).sqrt().max().item<double>());
    }
  }
  return worst;
}

TEST(MemoryBound, RepeatedInputDivergesWithoutTheBoundAndSaturatesWithIt) {
  int diverged = 0;
  for (Variant v : {Variant::kMAC, Variant::kMAG, Variant::kMAL, Variant::kLMM}) {
    ModelConfig c = TinyConfig(v);
    c.memory.theta_max = 0.1;  // an unstable inner learning rate: what the bound must contain
    auto unbounded = MakeModel(c, 5);
    c.memory.max_weight_rms = 1.0;
    auto bounded = MakeModel(c, 5);
    at::NoGradGuard no_grad;
    SessionState a = unbounded->NewState(), b = bounded->NewState();
    bool unbounded_failed = false;
    double unbounded_rms = 0;
    for (const std::vector<int64_t>& run : RepeatedRuns(300, 1)) {
      const at::Tensor t = at::tensor(run).unsqueeze(0);
      if (!unbounded_failed) {
        unbounded_failed = !unbounded->Forward(&a, t).ok();
        unbounded_rms = std::max(unbounded_rms, MaxWeightRms(a));
      }
      ASSERT_TRUE(bounded->Forward(&b, t).ok()) << Name(v) << " at position " << b.position;
    }
    diverged += unbounded_failed || unbounded_rms > 10;
    EXPECT_LE(MaxWeightRms(b), 1.0 + 1e-5) << Name(v);
    EXPECT_TRUE(at::isfinite(b.last_logits).all().item<bool>()) << Name(v);
  }
  // The phenomenon the bound exists for (so this test can tell it from a no-op): with these
  // seeds MAG, MAL and LMM diverge without it.
  EXPECT_GE(diverged, 2);
}

// The shipped default model (its config has no explicit bound: the default 1.0 applies).
TEST(MemoryBound, DefaultModelSurvivesLongRunsOfOneByte) {
  auto model = TitansModel::Load(TITANS_DEFAULT_MODEL_DIR);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_GT((*model)->config().memory.max_weight_rms, 0);
  at::NoGradGuard no_grad;
  SessionState s = (*model)->NewState();
  for (int64_t byte : {int64_t{'a'}, int64_t{' '}, int64_t{'='}}) {
    for (int i = 0; i < 20; ++i) {
      ASSERT_TRUE((*model)->Forward(&s, at::full({1, 100}, byte, at::kLong)).ok())
          << "byte " << byte << " at position " << s.position;
    }
  }
  EXPECT_EQ(s.position, 6000);
}

// Kernel (fp32, fused) and LibTorch reference with a bound low enough to act at every chunk.
TEST(MemoryBound, KernelAndReferenceApplyTheSameBound) {
  for (int depth : {1, 2, 3}) {
    MemorySpec spec;
    spec.depth = depth;
    spec.chunk_size = 4;
    spec.max_weight_rms = 0.05;
    const int64_t G = 3, d = 16, hidden = 32, T = 37;
    torch::manual_seed(depth);
    std::vector<at::Tensor> init;
    for (auto [in, out] : MemoryLayerShapes(depth, d, hidden)) {
      init.push_back(torch::randn({G, out, in}) / std::sqrt(static_cast<double>(in)));
    }
    at::Tensor k = torch::nn::functional::normalize(
        torch::randn({G, T, d}), torch::nn::functional::NormalizeFuncOptions().dim(2));
    at::Tensor q = torch::nn::functional::normalize(
        torch::randn({G, T, d}), torch::nn::functional::NormalizeFuncOptions().dim(2));
    at::Tensor v = torch::randn({G, T, d});
    MemoryGates gates{torch::log1p(-torch::sigmoid(torch::randn({G, T}) - 3)),
                      torch::log(torch::sigmoid(torch::randn({G, T}) + 1.5)),
                      0.3 * torch::sigmoid(torch::randn({G, T}))};
    at::NoGradGuard no_grad;
    MemoryState fused = NewMemoryState(init), reference = NewMemoryState(init);
    at::Tensor y_fused = MemoryWriteRead(spec, &fused, k, v, q, gates);
    at::Tensor y_ref = MemoryWriteReadTorch(spec, &reference, k, v, q, gates);
    EXPECT_LT((y_fused - y_ref).abs().max().item<double>(), 2e-5) << "depth " << depth;
    spec.max_weight_rms = 0;
    MemoryState free_run = NewMemoryState(init);
    at::Tensor y_free = MemoryWriteReadTorch(spec, &free_run, k, v, q, gates);
    // The bound acted (outputs differ from an unbounded run) ...
    EXPECT_GT((y_free - y_ref).abs().max().item<double>(), 1e-2) << "depth " << depth;
    for (int l = 0; l < depth; ++l) {
      EXPECT_LT((fused.weights[l] - reference.weights[l]).abs().max().item<double>(), 2e-6);
      // ... and holds: no head's matrix is above it.
      const at::Tensor rms = fused.weights[l].pow(2).mean({1, 2}).sqrt();
      EXPECT_LE(rms.max().item<double>(), 0.05 * (1 + 1e-5)) << "depth " << depth;
    }
  }
}

}  // namespace
}  // namespace titans::testing
