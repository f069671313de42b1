// The chunked dual form (model/memory_math.cc) against the plain per-token reference
// (memory_reference.h), for every depth, chunk size, activation and the residual option.
#include "model/memory_math.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <random>

#include "tests/model/memory_reference.h"

namespace titans {
namespace {

using testing::NewReferenceMemory;
using testing::ReferenceMemory;
using testing::ReferenceStep;

struct Inputs {
  at::Tensor k, v, q;            // [G, T, d]
  at::Tensor alpha, eta, theta;  // [G, T]
};

Inputs RandomInputs(int64_t groups, int64_t tokens, int64_t d, at::ScalarType dtype,
                    uint64_t seed) {
  torch::manual_seed(seed);
  auto opt = torch::TensorOptions().dtype(dtype);
  Inputs in;
  in.k = torch::nn::functional::normalize(torch::randn({groups, tokens, d}, opt),
                                          torch::nn::functional::NormalizeFuncOptions().dim(2));
  in.q = torch::nn::functional::normalize(torch::randn({groups, tokens, d}, opt),
                                          torch::nn::functional::NormalizeFuncOptions().dim(2));
  in.v = torch::randn({groups, tokens, d}, opt);
  in.alpha = torch::sigmoid(torch::randn({groups, tokens}, opt) - 3);
  in.eta = torch::sigmoid(torch::randn({groups, tokens}, opt) + 1.5);
  in.theta = 0.3 * torch::sigmoid(torch::randn({groups, tokens}, opt));
  return in;
}

MemoryGates GatesOf(const Inputs& in, int64_t begin, int64_t end) {
  return MemoryGates{torch::log1p(-in.alpha.slice(1, begin, end)),
                     torch::log(in.eta.slice(1, begin, end)), in.theta.slice(1, begin, end)};
}

std::vector<at::Tensor> RandomInit(const MemorySpec& spec, int64_t groups, int64_t d,
                                   int64_t hidden, at::ScalarType dtype) {
  std::vector<at::Tensor> w;
  for (auto [in, out] : MemoryLayerShapes(spec.depth, d, hidden)) {
    w.push_back(torch::randn({groups, out, in}, torch::TensorOptions().dtype(dtype)) /
                std::sqrt(static_cast<double>(in)));
  }
  return w;
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

struct Case {
  int depth;
  int chunk;
  Activation act;
  bool residual;
};

class DualFormVsReference : public ::testing::TestWithParam<Case> {};

// In double precision the dual form and the per-token recurrence are the same algebra evaluated
// in a different order, so they agree to rounding (~1e-15 relative); 1e-9 leaves room for the
// condition of deep MLPs without hiding a wrong term (a wrong coefficient shows up at >= 1e-3).
TEST_P(DualFormVsReference, OutputsAndStateMatchPerTokenRecurrence) {
  const Case c = GetParam();
  MemorySpec spec{c.depth, c.act, c.residual, c.chunk};
  const int64_t G = 3, T = 37, d = 8, hidden = 16;
  Inputs in = RandomInputs(G, T, d, at::kDouble, 7 + c.depth * 31 + c.chunk);
  std::vector<at::Tensor> init = RandomInit(spec, G, d, hidden, at::kDouble);

  MemoryState st = NewMemoryState(init);
  at::Tensor y = MemoryWriteRead(spec, &st, in.k, in.v, in.q, GatesOf(in, 0, T));

  ReferenceMemory ref = NewReferenceMemory(init);
  for (int64_t t = 0; t < T; ++t) {
    at::Tensor y_ref =
        ReferenceStep(spec, &ref, in.k.select(1, t), in.v.select(1, t), in.q.select(1, t),
                      in.alpha.select(1, t), in.eta.select(1, t), in.theta.select(1, t));
    ASSERT_LT(MaxAbsDiff(y.select(1, t), y_ref), 1e-9) << "token " << t;
  }
  const bool closed = T % c.chunk == 0;
  EXPECT_EQ(st.pending(), T % c.chunk);
  for (int l = 0; l < c.depth; ++l) {
    const at::Tensor& w_ref = closed ? ref.weights[l] : ref.chunk_start[l];
    const at::Tensor& s_ref = closed ? ref.momentum[l] : ref.chunk_start_momentum[l];
    EXPECT_LT(MaxAbsDiff(st.weights[l], w_ref), 1e-9) << "layer " << l;
    EXPECT_LT(MaxAbsDiff(st.momentum[l], s_ref), 1e-9) << "layer " << l;
  }
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (int depth = 1; depth <= 4; ++depth) {
    for (int chunk : {1, 4, 16}) {
      cases.push_back({depth, chunk, Activation::kSiLU, false});
    }
    cases.push_back({depth, 5, Activation::kGELU, true});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllDepthsAndChunks, DualFormVsReference, ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return "depth" + std::to_string(info.param.depth) + "_chunk" +
                                  std::to_string(info.param.chunk) +
                                  (info.param.act == Activation::kSiLU ? "_silu" : "_gelu") +
                                  (info.param.residual ? "_residual" : "");
                         });

// Feeding the same tokens in random splits (token by token included) changes nothing but float
// reassociation: fp32 tolerance 2e-5 on O(1) values (a few ulps times the chunk's reduction
// length).
TEST(MemoryWriteRead, SplitInvariance) {
  for (int depth = 1; depth <= 4; ++depth) {
    MemorySpec spec{depth, Activation::kSiLU, false, 8};
    const int64_t G = 2, T = 50, d = 16, hidden = 32;
    Inputs in = RandomInputs(G, T, d, at::kFloat, 100 + depth);
    std::vector<at::Tensor> init = RandomInit(spec, G, d, hidden, at::kFloat);
    MemoryState whole = NewMemoryState(init);
    at::Tensor y_whole = MemoryWriteRead(spec, &whole, in.k, in.v, in.q, GatesOf(in, 0, T));

    std::mt19937 rng(depth);
    for (int trial = 0; trial < 3; ++trial) {
      MemoryState split = NewMemoryState(init);
      std::vector<at::Tensor> ys;
      int64_t begin = 0;
      while (begin < T) {
        int64_t len = trial == 0 ? 1 : 1 + static_cast<int64_t>(rng() % 13);
        int64_t end = std::min(T, begin + len);
        ys.push_back(MemoryWriteRead(spec, &split, in.k.slice(1, begin, end),
                                     in.v.slice(1, begin, end), in.q.slice(1, begin, end),
                                     GatesOf(in, begin, end)));
        begin = end;
      }
      EXPECT_LT(MaxAbsDiff(torch::cat(ys, 1), y_whole), 2e-5) << "depth " << depth;
      ASSERT_EQ(split.pending(), whole.pending());
      for (int l = 0; l < depth; ++l) {
        EXPECT_LT(MaxAbsDiff(split.weights[l], whole.weights[l]), 2e-5);
        EXPECT_LT(MaxAbsDiff(split.momentum[l], whole.momentum[l]), 2e-5);
        EXPECT_LT(MaxAbsDiff(PendingDeltas(split, l), PendingDeltas(whole, l)), 2e-5);
      }
    }
  }
}

// Test-time learning: after writing key/value pairs, reading the same keys returns values closer
// to the written ones than the fresh memory does.
TEST(MemoryWriteRead, RetrievalErrorFallsAfterWriting) {
  for (int depth = 1; depth <= 4; ++depth) {
    MemorySpec spec{depth, Activation::kSiLU, false, 4};
    const int64_t G = 2, pairs = 8, d = 32, hidden = 64;
    Inputs in = RandomInputs(G, pairs, d, at::kFloat, 5 + depth);
    in.v = in.v / in.v.norm(2, 2, true);  // unit-norm values, as the model's SiLU'd v are O(1)
    in.alpha.fill_(0.001);
    in.eta.fill_(0.5);
    in.theta.fill_(0.2);
    std::vector<at::Tensor> init = RandomInit(spec, G, d, hidden, at::kFloat);
    MemoryState st = NewMemoryState(init);
    auto error = [&](const std::vector<at::Tensor>& w) {
      return (MemoryRead(spec, w, in.k) - in.v).pow(2).sum(2).mean().item<double>();
    };
    const double fresh = error(init);
    for (int pass = 0; pass < 8; ++pass) {
      MemoryWriteRead(spec, &st, in.k, in.v, in.k, GatesOf(in, 0, pairs));
    }
    const double learned = error(st.weights);
    EXPECT_LT(learned, 0.5 * fresh)
        << "depth " << depth << " fresh " << fresh << " learned " << learned;
  }
}

// Momentum and forgetting follow eqs. 13-14 exactly: with v = M_{Phi_0}(k) the gradient is zero,
// so the weights only decay: Phi_t = prod(1 - alpha) Phi_0 (+ momentum that is zero).
TEST(MemoryWriteRead, ForgettingWithoutSurpriseDecaysWeights) {
  MemorySpec spec{2, Activation::kSiLU, false, 4};
  const int64_t G = 1, T = 4, d = 8, hidden = 8;
  Inputs in = RandomInputs(G, T, d, at::kDouble, 3);
  std::vector<at::Tensor> init = RandomInit(spec, G, d, hidden, at::kDouble);
  in.v = MemoryRead(spec, init, in.k);  // no surprise at Phi_0
  MemoryState st = NewMemoryState(init);
  MemoryWriteRead(spec, &st, in.k, in.v, in.q, GatesOf(in, 0, T));
  const double keep = (1 - in.alpha).prod().item<double>();
  for (int l = 0; l < 2; ++l) {
    EXPECT_LT(MaxAbsDiff(st.weights[l], keep * init[l]), 1e-12);
    EXPECT_LT(st.momentum[l].abs().max().item<double>(), 1e-12);
  }
}

// Training is right: the gradient of a loss on the chunked outputs with respect to everything
// that produced them equals the gradient through the per-token recurrence (double precision).
TEST(MemoryWriteRead, ChunkedGradientMatchesPerTokenAutograd) {
  for (int depth : {1, 2, 3}) {
    MemorySpec spec{depth, Activation::kSiLU, depth == 3, 4};
    const int64_t G = 2, T = 10, d = 6, hidden = 8;
    Inputs base = RandomInputs(G, T, d, at::kDouble, 11 + depth);
    std::vector<at::Tensor> init0 = RandomInit(spec, G, d, hidden, at::kDouble);
    at::Tensor probe = torch::randn({G, T, d}, torch::kDouble);

    auto leaves = [&]() {
      Inputs in;
      in.k = base.k.clone().requires_grad_(true);
      in.v = base.v.clone().requires_grad_(true);
      in.q = base.q.clone().requires_grad_(true);
      in.alpha = base.alpha.clone().requires_grad_(true);
      in.eta = base.eta.clone().requires_grad_(true);
      in.theta = base.theta.clone().requires_grad_(true);
      std::vector<at::Tensor> init;
      for (auto& w : init0) init.push_back(w.clone().requires_grad_(true));
      return std::make_pair(in, init);
    };

    auto [in_a, init_a] = leaves();
    MemoryState st = NewMemoryState(init_a);
    at::Tensor y = MemoryWriteRead(spec, &st, in_a.k, in_a.v, in_a.q, GatesOf(in_a, 0, T));
    at::Tensor loss_a = (y * probe).sum() + st.weights.back().pow(2).sum();
    loss_a.backward();

    auto [in_b, init_b] = leaves();
    ReferenceMemory ref = NewReferenceMemory(init_b);
    std::vector<at::Tensor> ys;
    for (int64_t t = 0; t < T; ++t) {
      ys.push_back(ReferenceStep(spec, &ref, in_b.k.select(1, t), in_b.v.select(1, t),
                                 in_b.q.select(1, t), in_b.alpha.select(1, t),
                                 in_b.eta.select(1, t), in_b.theta.select(1, t)));
    }
    const at::Tensor& w_last = T % 4 == 0 ? ref.weights.back() : ref.chunk_start.back();
    at::Tensor loss_b = (torch::stack(ys, 1) * probe).sum() + w_last.pow(2).sum();
    loss_b.backward();

    EXPECT_NEAR(loss_a.item<double>(), loss_b.item<double>(), 1e-9);
    for (auto [a, b, name] : {std::tuple{in_a.k, in_b.k, "k"},
                              {in_a.v, in_b.v, "v"},
                              {in_a.q, in_b.q, "q"},
                              {in_a.alpha, in_b.alpha, "alpha"},
                              {in_a.eta, in_b.eta, "eta"},
                              {in_a.theta, in_b.theta, "theta"}}) {
      EXPECT_LT(MaxAbsDiff(a.grad(), b.grad()), 1e-8) << name << " depth " << depth;
    }
    for (int l = 0; l < depth; ++l) {
      EXPECT_LT(MaxAbsDiff(init_a[l].grad(), init_b[l].grad()), 1e-8) << "init " << l;
    }
  }
}

// The packed form reads each stream's heads in place from [B, T, H * d] rows; it must give the
// same bits (outputs and states) as the grouped form over each stream's own rows, for streams
// with different pending rows, lengths that close chunks and lengths that do not.
TEST(MemoryWriteReadPacked, SameBitsAsGroupedStreams) {
  at::NoGradGuard no_grad;
  MemorySpec spec{2, Activation::kSiLU, false, 4};
  const int64_t H = 3, d = 8, hidden = 16;
  const std::vector<int64_t> history = {0, 1, 3, 2}, lengths = {5, 1, 2, 9};
  std::vector<MemoryState> packed_states, grouped_states;
  for (size_t i = 0; i < history.size(); ++i) {
    torch::manual_seed(100 + i);
    MemoryState st = NewMemoryState(RandomInit(spec, H, d, hidden, at::kFloat));
    if (history[i] > 0) {
      Inputs pre = RandomInputs(H, history[i], d, at::kFloat, 200 + i);
      MemoryWriteRead(spec, &st, pre.k, pre.v, pre.q, GatesOf(pre, 0, history[i]));
    }
    packed_states.push_back(st);
    grouped_states.push_back(st);
  }
  int64_t total = 0;
  for (int64_t n : lengths) total += n;
  Inputs in = RandomInputs(H, total, d, at::kFloat, 300);  // [H, total, d] as groups
  // The packed layout of the same numbers: [1, total, H * d] and gates [1, total, H].
  auto pack = [](const at::Tensor& g) { return g.transpose(0, 1).reshape({1, g.size(1), -1}); };
  auto pack_gate = [&](const at::Tensor& g) { return g.t().reshape({1, total, H}).contiguous(); };
  const MemoryGates all_gates = GatesOf(in, 0, total);
  std::vector<MemoryState*> states;
  std::vector<PackedRows> rows;
  int64_t begin = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    states.push_back(&packed_states[i]);
    rows.push_back(PackedRows{begin, lengths[i]});
    begin += lengths[i];
  }
  at::Tensor y =
      MemoryWriteReadPacked(spec, H, states, rows, pack(in.k), pack(in.v), pack(in.q),
                            MemoryGates{pack_gate(all_gates.log_keep), pack_gate(all_gates.log_eta),
                                        pack_gate(all_gates.theta)});
  for (size_t i = 0; i < lengths.size(); ++i) {
    const int64_t b = rows[i].begin, e = b + rows[i].length;
    at::Tensor y_grouped =
        MemoryWriteRead(spec, &grouped_states[i], in.k.slice(1, b, e), in.v.slice(1, b, e),
                        in.q.slice(1, b, e), GatesOf(in, b, e));
    EXPECT_TRUE(at::equal(y.slice(1, b, e), pack(y_grouped))) << "stream " << i;
    const MemoryState &a = packed_states[i], &g = grouped_states[i];
    ASSERT_EQ(a.pending(), g.pending());
    for (int l = 0; l < spec.depth; ++l) {
      EXPECT_TRUE(at::equal(a.weights[l], g.weights[l])) << "stream " << i << " layer " << l;
      EXPECT_TRUE(at::equal(a.momentum[l], g.momentum[l]));
      EXPECT_TRUE(at::equal(PendingInputs(a, l), PendingInputs(g, l)));
      EXPECT_TRUE(at::equal(PendingDeltas(a, l), PendingDeltas(g, l)));
    }
    EXPECT_TRUE(at::equal(PendingGates(a).theta, PendingGates(g).theta));
    EXPECT_TRUE(at::equal(PendingGates(a).log_keep, PendingGates(g).log_keep));
  }
}

}  // namespace
}  // namespace titans
