// Whole-model properties for every variant: the chunked and token-by-token paths agree, a stream
// may be split anywhere, nothing sees the future, positions beyond 10^6 are handled, and the
// chunked form trains like the per-token recurrence.
#include "model/titans_model.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <random>
#include <set>

#include "model/determinism.h"
#include "tests/model/model_test_util.h"

namespace titans {
namespace {

using testing::MakeModel;
using testing::MaxStateDiff;
using testing::Name;
using testing::RandomTokens;
using testing::TinyConfig;

const Variant kVariants[] = {Variant::kMAC, Variant::kMAG, Variant::kMAL, Variant::kLMM,
                             Variant::kSWA};

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

at::Tensor ForwardAll(const TitansModel& m, SessionState* s, const at::Tensor& tokens) {
  auto out = m.Forward(s, tokens, LogitsMode::kAll);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : at::Tensor();
}

at::Tensor TokenByToken(const TitansModel& m, SessionState* s, const at::Tensor& tokens) {
  std::vector<at::Tensor> logits;
  for (int64_t t = 0; t < tokens.size(1); ++t) {
    logits.push_back(ForwardAll(m, s, tokens.slice(1, t, t + 1)));
  }
  return at::cat(logits, 1);
}

struct PathCase {
  Variant variant;
  int depth;
  int chunk;
};

class ChunkedVsTokenByToken : public ::testing::TestWithParam<PathCase> {};

// Double precision: the two paths evaluate the same sums in a different order, so they agree to
// ~1e-15 relative; 1e-9 on logits of size ~10 is far below any real error (a wrong gate or a
// missed pending token moves logits by >1e-3).
TEST_P(ChunkedVsTokenByToken, OutputsAndStateAgreeInDouble) {
  const PathCase p = GetParam();
  auto model = MakeModel(TinyConfig(p.variant, p.depth, p.chunk), 3, /*dbl=*/true);
  ASSERT_NE(model, nullptr);
  at::NoGradGuard no_grad;
  at::Tensor tokens = RandomTokens(1, 27, 5);
  SessionState chunked = model->NewState(), stepped = model->NewState();
  at::Tensor a = ForwardAll(*model, &chunked, tokens);
  at::Tensor b = TokenByToken(*model, &stepped, tokens);
  EXPECT_LT(MaxDiff(a, b), 1e-9);
  EXPECT_LT(MaxStateDiff(chunked, stepped), 1e-9);
  EXPECT_EQ(chunked.position, 27);
  EXPECT_TRUE(ValidateSessionState(model->config(), chunked).ok());
}

std::vector<PathCase> PathCases() {
  std::vector<PathCase> cases;
  for (Variant v : kVariants) {
    for (int depth = 1; depth <= 4; ++depth) {
      for (int chunk : {1, 4, 8}) cases.push_back({v, depth, chunk});
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllVariants, ChunkedVsTokenByToken, ::testing::ValuesIn(PathCases()),
                         [](const ::testing::TestParamInfo<PathCase>& info) {
                           return std::string(Name(info.param.variant)) + "_depth" +
                                  std::to_string(info.param.depth) + "_chunk" +
                                  std::to_string(info.param.chunk);
                         });

// memory.qk_activation "none" drops the SiLU before the queries' and keys' L2 norm: the reads
// change (same weights, different logits), and the chunked form still equals the per-token
// recurrence, for every memory variant.
TEST(QueryKeyActivation, NoneChangesReadsAndKeepsChunkedEqualToPerToken) {
  for (Variant v : {Variant::kMAC, Variant::kMAG, Variant::kMAL, Variant::kLMM}) {
    ModelConfig c = TinyConfig(v, /*depth=*/2, /*chunk=*/4);
    auto with_silu = MakeModel(c, 3, /*dbl=*/true);
    c.memory.qk_silu = false;
    auto without = MakeModel(c, 3, /*dbl=*/true);
    ASSERT_NE(with_silu, nullptr);
    ASSERT_NE(without, nullptr);
    at::NoGradGuard no_grad;
    at::Tensor tokens = RandomTokens(1, 27, 5);
    SessionState silu_state = with_silu->NewState();
    SessionState chunked = without->NewState(), stepped = without->NewState();
    at::Tensor silu_logits = ForwardAll(*with_silu, &silu_state, tokens);
    at::Tensor a = ForwardAll(*without, &chunked, tokens);
    at::Tensor b = TokenByToken(*without, &stepped, tokens);
    EXPECT_GT(MaxDiff(a, silu_logits), 1e-4) << Name(v);
    EXPECT_LT(MaxDiff(a, b), 1e-9) << Name(v);
    EXPECT_LT(MaxStateDiff(chunked, stepped), 1e-9) << Name(v);
  }
}

// The served precision: fp32. Tolerance 2e-4 absolute on logits of magnitude ~10: fp32 epsilon
// (1.2e-7) times reduction lengths (~100) through two layers, with margin.
TEST(ChunkedVsTokenByTokenFloat, AgreeWithinFloatTolerance) {
  for (Variant v : kVariants) {
    auto model = MakeModel(TinyConfig(v), 4);
    at::NoGradGuard no_grad;
    at::Tensor tokens = RandomTokens(1, 40, 6);
    SessionState chunked = model->NewState(), stepped = model->NewState();
    at::Tensor a = ForwardAll(*model, &chunked, tokens);
    at::Tensor b = TokenByToken(*model, &stepped, tokens);
    EXPECT_LT(MaxDiff(a, b), 2e-4) << Name(v);
    EXPECT_LT(MaxStateDiff(chunked, stepped), 2e-4) << Name(v);
  }
}

// A stream fed in one call or in random splits yields the same outputs and state.
TEST(AppendSplitInvariance, RandomSplitsMatchOneCall) {
  for (Variant v : kVariants) {
    auto model = MakeModel(TinyConfig(v, 2, 4), 7, /*dbl=*/true);
    at::NoGradGuard no_grad;
    at::Tensor tokens = RandomTokens(1, 70, 8);
    SessionState whole = model->NewState();
    at::Tensor expected = ForwardAll(*model, &whole, tokens);
    std::mt19937 rng(static_cast<int>(v) + 1);
    for (int trial = 0; trial < 4; ++trial) {
      SessionState split = model->NewState();
      std::vector<at::Tensor> parts;
      int64_t begin = 0;
      while (begin < 70) {
        const int64_t end = std::min<int64_t>(70, begin + 1 + rng() % 23);
        parts.push_back(ForwardAll(*model, &split, tokens.slice(1, begin, end)));
        begin = end;
      }
      EXPECT_LT(MaxDiff(at::cat(parts, 1), expected), 1e-9) << Name(v) << " trial " << trial;
      EXPECT_LT(MaxStateDiff(split, whole), 1e-9) << Name(v);
    }
  }
}

// A long append is cut into steps of kMaxStepTokens; crossing that boundary changes nothing.
TEST(AppendSplitInvariance, LongAppendAcrossStepBoundaries) {
  for (Variant v : {Variant::kMAG, Variant::kLMM}) {
    auto model = MakeModel(TinyConfig(v), 9);
    at::NoGradGuard no_grad;
    const int64_t T = TitansModel::kMaxStepTokens + 37;
    at::Tensor tokens = RandomTokens(1, T, 10);
    SessionState whole = model->NewState(), parts = model->NewState();
    at::Tensor a = ForwardAll(*model, &whole, tokens);
    at::Tensor b1 = ForwardAll(*model, &parts, tokens.slice(1, 0, 100));
    at::Tensor b2 = ForwardAll(*model, &parts, tokens.slice(1, 100, T));
    EXPECT_LT(MaxDiff(a, at::cat({b1, b2}, 1)), 2e-4) << Name(v);
  }
}

// Changing token j never changes an output before j (MAC's retrieved-memory tokens, the memory's
// open chunk and the conv tails included), and does change outputs from j on.
TEST(Causality, FutureTokensDoNotChangeThePast) {
  for (Variant v : kVariants) {
    auto model = MakeModel(TinyConfig(v, 2, 4), 11, /*dbl=*/true);
    at::NoGradGuard no_grad;
    const int64_t T = 30;
    at::Tensor tokens = RandomTokens(1, T, 12);
    SessionState s0 = model->NewState();
    at::Tensor base = ForwardAll(*model, &s0, tokens);
    for (int64_t j : {0, 3, 7, 8, 13, 29}) {
      at::Tensor changed = tokens.clone();
      changed[0][j] = (changed[0][j].item<int64_t>() + 1) % 256;
      SessionState s1 = model->NewState();
      at::Tensor out = ForwardAll(*model, &s1, changed);
      if (j > 0) {
        EXPECT_EQ(MaxDiff(out.slice(1, 0, j), base.slice(1, 0, j)), 0.0) << Name(v) << " j=" << j;
      }
      EXPECT_GT(MaxDiff(out.select(1, j), base.select(1, j)), 1e-6) << Name(v) << " j=" << j;
    }
  }
}

// Rotary angles are computed in double: attention at positions past 10^6 (and past 2^31) gives
// the same result as near 0, since only relative positions matter.
TEST(Positions, AttentionIsExactBeyondOneMillion) {
  for (Variant v : {Variant::kMAG, Variant::kMAL}) {
    ModelConfig c = TinyConfig(v);
    auto model = MakeModel(c, 13);
    at::NoGradGuard no_grad;
    at::Tensor tokens = RandomTokens(1, 20, 14);
    SessionState near_zero = model->NewState();
    at::Tensor expected = ForwardAll(*model, &near_zero, tokens);
    // A fresh stream placed at a large position that is a multiple of the chunk size: memory,
    // conv tails and the (empty) attention cache are identical, only rotary phases differ.
    for (int64_t offset : {int64_t{1} << 20, int64_t{3000000}, (int64_t{1} << 31) + 8}) {
      SessionState far = model->NewState();
      far.position = offset;
      at::Tensor out = ForwardAll(*model, &far, tokens);
      EXPECT_LT(MaxDiff(out, expected), 1e-4) << Name(v) << " offset " << offset;
      EXPECT_EQ(far.position, offset + 20);
    }
  }
}

// The gradient of a loss through the chunked form (one call over the sequence) equals the
// gradient through the token-by-token recurrence, for every parameter (double precision).
TEST(Training, ChunkedGradientEqualsTokenByTokenAutograd) {
  for (Variant v : kVariants) {
    auto model = MakeModel(TinyConfig(v, 2, 4), 15, /*dbl=*/true);
    ModelParams& params = model->mutable_params();
    std::vector<at::Tensor*> leaves;
    for (ParamSlot& s : ParamSlots(model->config(), &params)) {
      s.tensor->requires_grad_(true);
      leaves.push_back(s.tensor);
    }
    at::Tensor tokens = RandomTokens(2, 18, 16);
    at::Tensor probe = at::randn({2, 18, 260}, at::kDouble);
    auto grads = [&](bool chunked) {
      for (at::Tensor* t : leaves) {
        if (t->grad().defined()) t->mutable_grad() = at::Tensor();
      }
      SessionState s = model->NewState(2, /*track_grad=*/true);
      at::Tensor logits =
          chunked ? ForwardAll(*model, &s, tokens) : TokenByToken(*model, &s, tokens);
      (logits * probe).sum().backward();
      std::vector<at::Tensor> g;
      for (at::Tensor* t : leaves) g.push_back(t->grad().clone());
      return g;
    };
    std::vector<at::Tensor> a = grads(true), b = grads(false);
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, MaxDiff(a[i], b[i]));
    EXPECT_LT(worst, 1e-8) << Name(v);
    if (v == Variant::kSWA) continue;  // no memory
    // Gradients really reach the learned initial memory and the gates.
    const NeuralMemoryParams& m = params.layers[0].memory;
    EXPECT_GT(m.initial_weights[0].grad().abs().sum().item<double>(), 0) << Name(v);
    EXPECT_GT(m.alpha_w.grad().abs().sum().item<double>(), 0) << Name(v);
  }
}

// The neural memory is the only path from a token far outside the attention window to a later
// prediction: training gets a gradient through it (every Titans variant), and the attention-only
// baseline gets none.
TEST(Training, GradientReachesTokensOutsideTheWindowOnlyThroughMemory) {
  for (Variant v : kVariants) {
    ModelConfig c = TinyConfig(v, 2, 4);
    c.attention.window = 8;
    c.attention.segment_size = 8;
    auto model = MakeModel(c, 21, /*dbl=*/true);
    at::Tensor tokens = RandomTokens(1, 80, 22);
    SessionState s = model->NewState(1, /*track_grad=*/true);
    ModelParams& params = model->mutable_params();
    params.embedding.requires_grad_(true);
    at::Tensor logits = ForwardAll(*model, &s, tokens);
    // One logit of the last position, for a token other than token 0 (embeddings are tied: the
    // head gives gradient only to that logit's row). Token 0's id appears nowhere else, so its
    // row gets gradient only through paths from position 0 to position 79.
    const int64_t first = tokens[0][0].item<int64_t>();
    logits[0][79][(first + 1) % 256].backward();
    bool elsewhere = false;
    for (int64_t t = 1; t < 80; ++t) elsewhere |= tokens[0][t].item<int64_t>() == first;
    ASSERT_FALSE(elsewhere) << "pick another seed";
    const double g = params.embedding.grad()[first].abs().sum().item<double>();
    if (v == Variant::kSWA) {
      EXPECT_EQ(g, 0.0) << "attention-only model sees past its window";
    } else {
      EXPECT_GT(g, 1e-9) << Name(v) << ": no gradient through the memory";
    }
    params.embedding.requires_grad_(false);
  }
}

// Serving (no autograd, fp32 CPU) runs the fused kernel; training runs the LibTorch form. Both
// give the same logits and state for every variant and memory depth (fp32 tolerance as above).
TEST(Forward, KernelPathMatchesLibTorchPath) {
  for (Variant v : kVariants) {
    for (int depth = 1; depth <= 4; ++depth) {
      auto model = MakeModel(TinyConfig(v, depth, 4), 17);
      at::Tensor tokens = RandomTokens(1, 45, 18);
      SessionState kernel_state = model->NewState(), torch_state = model->NewState();
      at::Tensor kernel_logits, torch_logits;
      {
        at::NoGradGuard no_grad;  // -> kernels::RunMemoryTasks
        kernel_logits = ForwardAll(*model, &kernel_state, tokens.slice(1, 0, 30));
        kernel_logits =
            at::cat({kernel_logits, ForwardAll(*model, &kernel_state, tokens.slice(1, 30, 45))}, 1);
      }
      {
        at::AutoGradMode grad(true);  // -> MemoryWriteReadTorch
        torch_logits = ForwardAll(*model, &torch_state, tokens.slice(1, 0, 30));
        torch_logits =
            at::cat({torch_logits, ForwardAll(*model, &torch_state, tokens.slice(1, 30, 45))}, 1);
      }
      EXPECT_LT(MaxDiff(kernel_logits, torch_logits.detach()), 2e-4)
          << Name(v) << " depth " << depth;
      EXPECT_LT(MaxStateDiff(kernel_state, torch_state), 2e-4) << Name(v) << " depth " << depth;
    }
  }
}

// Continuous batching: several sessions at different positions, each with its own number of
// tokens, in one ForwardMany give what each gets alone (fp32): bit for bit with LibTorch's
// portable kernels (ctest runs it both ways), within 2e-4 with its vectorised ones.
TEST(ForwardMany, MatchesSessionsRunAlone) {
  for (Variant v : kVariants) {
    auto model = MakeModel(TinyConfig(v, 2, 4), 19);
    at::NoGradGuard no_grad;
    const std::vector<int64_t> history = {0, 3, 8, 13, 30};
    const std::vector<int64_t> counts = {1, 5, 9, 1, 20};
    std::vector<SessionState> batched, alone;
    std::vector<std::vector<int64_t>> tokens;
    for (size_t i = 0; i < history.size(); ++i) {
      SessionState s = model->NewState();
      if (history[i] > 0) {
        ASSERT_TRUE(model->Forward(&s, RandomTokens(1, history[i], 40 + i)).ok());
      }
      batched.push_back(s);
      alone.push_back(s);
      at::Tensor t = RandomTokens(1, counts[i], 50 + i);
      tokens.emplace_back(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + counts[i]);
    }
    std::vector<SessionState*> ptrs;
    for (SessionState& s : batched) ptrs.push_back(&s);
    ASSERT_TRUE(model->ForwardMany(ptrs, tokens).ok());
    for (size_t i = 0; i < history.size(); ++i) {
      ASSERT_TRUE(model->Forward(&alone[i], at::tensor(tokens[i]).unsqueeze(0)).ok());
      EXPECT_EQ(batched[i].position, history[i] + counts[i]);
      if (BatchInvariantCpuKernels()) {
        // Batch invariance (model/determinism.h): not just close, bit-identical.
        EXPECT_EQ(MaxStateDiff(batched[i], alone[i]), 0.0) << Name(v) << " session " << i;
        EXPECT_TRUE(at::equal(batched[i].last_logits, alone[i].last_logits))
            << Name(v) << " session " << i;
      } else {
        EXPECT_LT(MaxStateDiff(batched[i], alone[i]), 2e-4) << Name(v) << " session " << i;
      }
      EXPECT_EQ(batched[i].recent_tokens, alone[i].recent_tokens);
    }
    // All or nothing: one bad token leaves every state as it was.
    std::vector<SessionState> before = batched;
    tokens[2][0] = 9999;
    EXPECT_EQ(model->ForwardMany(ptrs, tokens).code(), absl::StatusCode::kInvalidArgument);
    for (size_t i = 0; i < history.size(); ++i) EXPECT_EQ(MaxStateDiff(batched[i], before[i]), 0.0);
  }
}

// The memory kernel appends a step's open-chunk rows in place (PendingChunk): a copy of the state
// taken before (a backup, a fork, a rewind point) keeps its rows and continues exactly as a state
// that never shared the buffer.
TEST(ForwardMany, InPlacePendingRowsLeaveCopiesIntact) {
  for (Variant v : {Variant::kMAC, Variant::kMAG, Variant::kMAL, Variant::kLMM}) {
    auto model = MakeModel(TinyConfig(v, 2, 8), 29);
    at::NoGradGuard no_grad;
    const at::Tensor a = RandomTokens(1, 3, 30), b = RandomTokens(1, 2, 31),
                     c = RandomTokens(1, 3, 32);
    SessionState live = model->NewState();
    ASSERT_TRUE(model->Forward(&live, a).ok());  // 3 rows pending in a chunk of 8
    const SessionState copy = live;
    ASSERT_TRUE(model->Forward(&live, b).ok());  // appends rows 3..4 to the shared buffers
    const MemoryState& lm = live.layers[0].memory;
    ASSERT_NE(lm.chunk, nullptr) << Name(v);
    EXPECT_EQ(lm.chunk, copy.layers[0].memory.chunk)
        << Name(v) << ": the step did not append in place";
    EXPECT_EQ(lm.pending(), 5);
    EXPECT_EQ(copy.layers[0].memory.pending(), 3);

    // The same histories, each computed in buffers of its own.
    SessionState fresh_ab = model->NewState(), fresh_ac = model->NewState();
    ASSERT_TRUE(model->Forward(&fresh_ab, a).ok());
    ASSERT_TRUE(model->Forward(&fresh_ab, b).ok());
    ASSERT_TRUE(model->Forward(&fresh_ac, a).ok());
    SessionState fresh_a = fresh_ac;
    ASSERT_TRUE(model->Forward(&fresh_ac, c).ok());
    const double tolerance = BatchInvariantCpuKernels() ? 0.0 : 2e-4;
    EXPECT_LE(MaxStateDiff(copy, fresh_a), 0.0) << Name(v) << ": the copy's rows changed";
    EXPECT_LE(MaxStateDiff(live, fresh_ab), tolerance) << Name(v);
    // The copy continues with other tokens: its claim fails, so it copies its rows first, and
    // neither it nor the live state sees the other's rows.
    SessionState branch = copy;
    ASSERT_TRUE(model->Forward(&branch, c).ok());
    EXPECT_LE(MaxStateDiff(branch, fresh_ac), tolerance) << Name(v);
    EXPECT_NE(branch.layers[0].memory.chunk, lm.chunk);
    EXPECT_LE(MaxStateDiff(live, fresh_ab), tolerance) << Name(v);
    SessionState live_next = live;
    ASSERT_TRUE(model->Forward(&live_next, b).ok());  // the latest state keeps appending: 7 rows
    EXPECT_EQ(live_next.layers[0].memory.chunk, lm.chunk);
  }
}

// The window attention's cache in ring form (session_state.h): a state that nothing else holds
// takes its next tokens into the ring's free slots in place; a state with a copy writes a fresh
// ring, and the copy continues exactly; a step that fails after writing in place leaves the
// state exactly as it was.
TEST(ForwardMany, RingCachesWriteInPlaceAndLeaveCopiesIntact) {
  const double tolerance = BatchInvariantCpuKernels() ? 0.0 : 2e-4;
  for (Variant v : {Variant::kMAG, Variant::kMAL, Variant::kSWA}) {
    auto model = MakeModel(TinyConfig(v, 2, 4), 33);
    at::NoGradGuard no_grad;
    const at::Tensor a = RandomTokens(1, 20, 34), b = RandomTokens(1, 1, 35),
                     c = RandomTokens(1, 3, 36);
    SessionState live = model->NewState();
    ASSERT_TRUE(model->Forward(&live, a).ok());  // past the window of 8: a full cache
    const LayerState& l0 = live.layers[0];
    ASSERT_TRUE(CacheIsRing(l0)) << Name(v);
    EXPECT_EQ(CachedEntries(l0), 7);
    EXPECT_EQ(l0.attn_room, 0) << Name(v) << ": a stored state has no room";
    const void* ring = l0.attn_k.data_ptr();
    ASSERT_TRUE(model->Forward(&live, b).ok());
    EXPECT_EQ(live.layers[0].attn_k.data_ptr(), ring) << Name(v) << ": not written in place";
    EXPECT_EQ(CachedEntries(live.layers[0]), 7);

    const SessionState copy = live;  // a snapshot: the next step must not touch its ring
    ASSERT_TRUE(model->Forward(&live, b).ok());
    EXPECT_NE(live.layers[0].attn_k.data_ptr(), ring) << Name(v) << ": wrote a shared ring";
    const void* own = live.layers[0].attn_k.data_ptr();
    ASSERT_TRUE(model->Forward(&live, c).ok());
    EXPECT_EQ(live.layers[0].attn_k.data_ptr(), own) << Name(v);
    // Decode steps well past the ring's free slots: in place throughout (the slots that drop
    // out of the window are reused).
    const at::Tensor decode = RandomTokens(1, 40, 37);
    for (int64_t t = 0; t < decode.size(1); ++t) {
      ASSERT_TRUE(model->Forward(&live, decode.slice(1, t, t + 1)).ok());
    }
    EXPECT_EQ(live.layers[0].attn_k.data_ptr(), own) << Name(v);

    // The same histories computed in states of their own.
    SessionState fresh_copy = model->NewState(), fresh_live = model->NewState();
    for (const at::Tensor& t : {a, b}) ASSERT_TRUE(model->Forward(&fresh_copy, t).ok());
    for (const at::Tensor& t : {a, b, b, c, decode}) {
      ASSERT_TRUE(model->Forward(&fresh_live, t).ok());
    }
    EXPECT_LE(MaxStateDiff(copy, fresh_copy), tolerance) << Name(v) << ": the copy changed";
    EXPECT_LE(MaxStateDiff(live, fresh_live), tolerance) << Name(v);
    SessionState branch = copy;
    ASSERT_TRUE(model->Forward(&branch, c).ok());
    ASSERT_TRUE(model->Forward(&fresh_copy, c).ok());
    EXPECT_LE(MaxStateDiff(branch, fresh_copy), tolerance) << Name(v);

    // A step that writes in place and then fails (non-finite logits) changes nothing.
    if (v == Variant::kSWA) continue;  // no memory weights to poison
    SessionState broken = model->NewState();
    ASSERT_TRUE(model->Forward(&broken, a).ok());
    at::Tensor& w = broken.layers[1].memory.weights[0];
    w = at::full_like(w, NAN);
    const auto before = SerializeSessionState(model->config(), broken, model->fingerprint());
    ASSERT_TRUE(before.ok()) << before.status();
    const void* broken_ring = broken.layers[0].attn_k.data_ptr();
    std::vector<absl::Status> statuses;
    const int64_t id = b.data_ptr<int64_t>()[0];
    ASSERT_TRUE(model->ForwardMany({&broken}, {{id}}, &statuses).ok());
    EXPECT_EQ(statuses[0].code(), absl::StatusCode::kInternal) << Name(v);
    EXPECT_EQ(broken.layers[0].attn_k.data_ptr(), broken_ring);
    const auto after = SerializeSessionState(model->config(), broken, model->fingerprint());
    ASSERT_TRUE(after.ok());
    EXPECT_TRUE(*after == *before) << Name(v) << ": a failed step changed the state";
  }
}

// The conv tails in ring form, as the caches above: in place when nothing else holds them, a
// fresh ring when a copy does, and the copy continues exactly.
TEST(ForwardMany, RingTailsWriteInPlaceAndLeaveCopiesIntact) {
  const double tolerance = BatchInvariantCpuKernels() ? 0.0 : 2e-4;
  for (Variant v : {Variant::kMAC, Variant::kMAG, Variant::kMAL, Variant::kLMM}) {
    auto model = MakeModel(TinyConfig(v, 2, 4), 38);
    at::NoGradGuard no_grad;
    const at::Tensor a = RandomTokens(1, 9, 39), b = RandomTokens(1, 1, 40),
                     decode = RandomTokens(1, 30, 41);
    SessionState live = model->NewState();
    ASSERT_TRUE(model->Forward(&live, a).ok());
    ASSERT_GE(live.layers[1].k_ring.start, 0) << Name(v);
    EXPECT_EQ(live.layers[1].k_ring.room, 0);
    const void* tail = live.layers[1].k_tail.data_ptr();
    ASSERT_TRUE(model->Forward(&live, b).ok());
    EXPECT_EQ(live.layers[1].k_tail.data_ptr(), tail) << Name(v) << ": not written in place";
    const SessionState copy = live;
    ASSERT_TRUE(model->Forward(&live, b).ok());
    EXPECT_NE(live.layers[1].k_tail.data_ptr(), tail) << Name(v) << ": wrote a shared tail";
    const void* own = live.layers[1].k_tail.data_ptr();
    for (int64_t t = 0; t < decode.size(1); ++t) {
      ASSERT_TRUE(model->Forward(&live, decode.slice(1, t, t + 1)).ok());
    }
    EXPECT_EQ(live.layers[1].k_tail.data_ptr(), own) << Name(v);
    SessionState fresh_copy = model->NewState(), fresh_live = model->NewState();
    for (const at::Tensor& t : {a, b}) ASSERT_TRUE(model->Forward(&fresh_copy, t).ok());
    for (const at::Tensor& t : {a, b, b, decode}) ASSERT_TRUE(model->Forward(&fresh_live, t).ok());
    EXPECT_LE(MaxStateDiff(copy, fresh_copy), tolerance) << Name(v) << ": the copy changed";
    EXPECT_LE(MaxStateDiff(live, fresh_live), tolerance) << Name(v);
  }
}

// Split invariance in fp32 (issue 20): the same stream appended in one call or in random pieces,
// through Forward or through ForwardMany beside another session that is at a different position,
// gives the same logits at every token and the same state: bit for bit with LibTorch's portable
// kernels (each token's work is done in an order fixed by its absolute position), within 2e-4
// with the vectorised ones. MAC's streams cross segment and chunk boundaries at every split.
TEST(ForwardMany, SplitInvariantLogitsAndState) {
  for (Variant v : kVariants) {
    auto model = MakeModel(TinyConfig(v, 2, 4), 23);
    at::NoGradGuard no_grad;
    const int64_t T = 300;
    const at::Tensor tokens = RandomTokens(1, T, 24);
    SessionState whole = model->NewState();
    const at::Tensor expected = ForwardAll(*model, &whole, tokens);
    std::mt19937 rng(static_cast<int>(v) + 31);
    for (int trial = 0; trial < 3; ++trial) {
      SessionState split = model->NewState(), many = model->NewState();
      SessionState other = model->NewState();
      ASSERT_TRUE(model->Forward(&other, RandomTokens(1, 5 + trial * 7, 25)).ok());
      std::vector<at::Tensor> parts;
      int64_t begin = 0;
      while (begin < T) {
        const int64_t end = std::min<int64_t>(T, begin + 1 + rng() % (trial == 0 ? 5 : 97));
        const at::Tensor piece = tokens.slice(1, begin, end);
        parts.push_back(ForwardAll(*model, &split, piece));
        std::vector<int64_t> ids(piece.data_ptr<int64_t>(),
                                 piece.data_ptr<int64_t>() + end - begin);
        ASSERT_TRUE(model->ForwardMany({&many, &other}, {ids, {ids[0]}}).ok());
        // The last token's logits, as the engine samples from them.
        const at::Tensor at_end = expected.select(1, end - 1);
        if (BatchInvariantCpuKernels()) {
          EXPECT_TRUE(at::equal(many.last_logits, at_end)) << Name(v) << " token " << end;
        } else {
          EXPECT_LT(MaxDiff(many.last_logits, at_end), 2e-4) << Name(v) << " token " << end;
        }
        begin = end;
      }
      const at::Tensor got = at::cat(parts, 1);
      if (BatchInvariantCpuKernels()) {
        EXPECT_TRUE(at::equal(got, expected)) << Name(v) << " trial " << trial;
        EXPECT_EQ(MaxStateDiff(split, whole), 0.0) << Name(v) << " trial " << trial;
        EXPECT_EQ(MaxStateDiff(many, whole), 0.0) << Name(v) << " trial " << trial;
      } else {
        EXPECT_LT(MaxDiff(got, expected), 2e-4) << Name(v) << " trial " << trial;
        EXPECT_LT(MaxStateDiff(split, whole), 2e-4) << Name(v);
        EXPECT_LT(MaxStateDiff(many, whole), 2e-4) << Name(v);
      }
    }
  }
}

// A model whose memory diverges (absurd inner learning rate) must not poison the session: the
// call fails with INTERNAL and the state stays as it was; in ForwardMany only that session fails.
TEST(Forward, NumericalOverflowLeavesStateUntouched) {
  ModelConfig c = TinyConfig(Variant::kLMM);
  c.memory.theta_max = 100;
  c.memory.theta_bias_init = 10;
  c.memory.eta_bias_init = 10;
  auto unstable = MakeModel(c, 3);
  at::NoGradGuard no_grad;
  SessionState s = unstable->NewState();
  absl::Status st;
  int64_t consumed = 0;
  for (int i = 0; i < 50 && st.ok(); ++i) {
    SessionState before = s;
    st = unstable->Forward(&s, RandomTokens(1, 16, 100 + i)).status();
    if (st.ok()) {
      consumed += 16;
    } else {
      EXPECT_EQ(MaxStateDiff(s, before), 0.0);
    }
  }
  ASSERT_EQ(st.code(), absl::StatusCode::kInternal) << "the memory never overflowed";
  EXPECT_NE(st.message().find("non-finite"), std::string::npos);
  EXPECT_EQ(s.position, consumed);
  EXPECT_TRUE(at::isfinite(s.last_logits).all().item<bool>());

  SessionState a = unstable->NewState();
  std::vector<absl::Status> statuses;
  SessionState fresh = unstable->NewState();
  std::vector<int64_t> few = {1, 2, 3};
  std::vector<int64_t> many(consumed + 64, 7);
  ASSERT_TRUE(unstable->ForwardMany({&fresh, &a}, {few, many}, &statuses).ok());
  EXPECT_TRUE(statuses[0].ok());
  EXPECT_EQ(fresh.position, 3);
  EXPECT_EQ(statuses[1].code(), absl::StatusCode::kInternal);
  EXPECT_EQ(a.position, 0);
}

TEST(Forward, RejectsBadTokensAndLeavesStateUntouched) {
  auto model = MakeModel(TinyConfig(Variant::kMAC));
  at::NoGradGuard no_grad;
  SessionState s = model->NewState();
  ASSERT_TRUE(model->Forward(&s, RandomTokens(1, 5, 1)).ok());
  SessionState before = s;
  at::Tensor bad = RandomTokens(1, 5, 2);
  bad[0][3] = 260;
  auto r = model->Forward(&s, bad);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("260"), std::string::npos);
  bad[0][3] = -1;
  EXPECT_EQ(model->Forward(&s, bad).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Forward(&s, at::zeros({1, 0}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Forward(&s, at::zeros({1, 3}, at::kInt)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Forward(&s, at::zeros({2, 3}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.position, before.position);
  EXPECT_EQ(MaxStateDiff(s, before), 0.0);
}

// State size does not grow with history.
TEST(SessionStateSize, BoundedIndependentOfHistory) {
  for (Variant v : kVariants) {
    auto model = MakeModel(TinyConfig(v));
    at::NoGradGuard no_grad;
    SessionState s = model->NewState();
    ASSERT_TRUE(model->Forward(&s, RandomTokens(1, 64, 3)).ok());
    const int64_t at64 = StateBytes(s);
    ASSERT_TRUE(model->Forward(&s, RandomTokens(1, 600, 4)).ok());
    EXPECT_EQ(StateBytes(s), at64) << Name(v);  // 64 and 664 are both on chunk/segment boundaries
  }
}

}  // namespace
}  // namespace titans

namespace titans {
namespace {

// The tensor of `s` that keeps the most memory alive beyond its own bytes: "" when every
// tensor's storage is at most 1.25 times its bytes plus 4 KiB (CompactSessionState's rule).
std::string LargestOverhang(const SessionState& s) {
  std::string worst;
  testing::ForEachStateTensor(
      s, s, [&](const std::string& name, const at::Tensor& t, const at::Tensor&) {
        if (!t.defined() || !t.has_storage()) return;
        const int64_t view = t.numel() * static_cast<int64_t>(t.element_size());
        const int64_t storage = static_cast<int64_t>(t.storage().nbytes());
        if (storage > view + view / 4 + 4096) {
          worst = name + " keeps " + std::to_string(storage) + " bytes for " + std::to_string(view);
        }
      });
  return worst;
}

// A state keeps no buffer alive that is much larger than itself: conv tails and attention
// caches sliced from a long append's rows, pending rows in chunk-sized buffers and logits taken
// from a whole step's get storage of their own. Through Forward (all logits) and ForwardMany,
// a long piece, a short one and decode steps, for every variant.
TEST(SessionStateSize, StatesKeepNoLargerBuffersAlive) {
  for (Variant v : kVariants) {
    auto model = MakeModel(TinyConfig(v));
    at::NoGradGuard no_grad;
    SessionState a = model->NewState(), b = model->NewState(), c = model->NewState();
    ASSERT_TRUE(model->Forward(&a, RandomTokens(1, 301, 3), LogitsMode::kAll).ok());
    EXPECT_EQ(LargestOverhang(a), "") << Name(v) << " after Forward";
    at::Tensor t = RandomTokens(1, 301, 3);
    std::vector<int64_t> ids(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + 301);
    ASSERT_TRUE(model->ForwardMany({&b, &c}, {ids, {1, 2}}).ok());
    EXPECT_EQ(LargestOverhang(b), "") << Name(v) << " after ForwardMany";
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(model->ForwardMany({&b}, {{int64_t{7 + i}}}).ok());
    EXPECT_EQ(LargestOverhang(b), "") << Name(v) << " after decode steps";
  }
}

// Bytes of all distinct buffers a state in tensor form keeps alive (each storage once; ring
// forms would be read through copies, so the test checks there are none first).
int64_t HeldBytes(const SessionState& s) {
  std::set<const void*> seen;
  int64_t bytes = 0;
  testing::ForEachStateTensor(s, s,
                              [&](const std::string&, const at::Tensor& t, const at::Tensor&) {
                                if (!t.defined() || !t.has_storage()) return;
                                if (seen.insert(t.storage().unsafeGetStorageImpl()).second) {
                                  bytes += static_cast<int64_t>(t.storage().nbytes());
                                }
                              });
  return bytes;
}

// A settled state (a session at rest) keeps no working room: no open chunk's spare rows, no ring
// slots, no step's buffers; its values are bit for bit those it had, and it continues exactly as
// the unsettled state does. For every variant, with and without rows pending in the open chunk.
TEST(SessionStateSize, SettledStatesHoldTheirBytesAndContinueExactly) {
  for (Variant v : kVariants) {
    ModelConfig config = TinyConfig(v);
    auto model = MakeModel(config);
    at::NoGradGuard no_grad;
    for (int64_t length : {int64_t{64}, int64_t{75}}) {  // 64: on chunk boundaries; 75: not
      SessionState s = model->NewState();
      at::Tensor t = RandomTokens(1, length, 5);
      std::vector<int64_t> ids(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + length);
      ASSERT_TRUE(model->ForwardMany({&s}, {ids}).ok());
      for (int i = 0; i < 3; ++i) ASSERT_TRUE(model->ForwardMany({&s}, {{int64_t{9 + i}}}).ok());
      const std::string where = Name(v) + " at " + std::to_string(length + 3);
      SessionState settled = s;
      SettleSessionState(&settled);
      EXPECT_EQ(StateBytes(settled), StateBytes(s)) << where;
      EXPECT_EQ(MaxStateDiff(settled, s), 0.0) << where;
      EXPECT_TRUE(settled.last_logits.equal(s.last_logits)) << where;
      // Each tensor may keep at most 4 KiB beyond its bytes (CompactSessionState's rule); the
      // tiny config's tensors are small, so allow that much per layer and tensor kind.
      const int64_t slack = 4096 * 12 * static_cast<int64_t>(config.num_layers);
      for (const LayerState& L : settled.layers) {
        EXPECT_EQ(L.memory.chunk, nullptr) << where;
        EXPECT_FALSE(CacheIsRing(L)) << where;
        EXPECT_LT(RingOf(L, &LayerState::k_tail).start, 0) << where;
      }
      EXPECT_LE(HeldBytes(settled), StateBytes(settled) + slack) << where;
      // Both continue to the same bits, through decode steps and a longer piece.
      for (std::vector<int64_t> next : {std::vector<int64_t>{3}, std::vector<int64_t>(21, 4)}) {
        ASSERT_TRUE(model->ForwardMany({&s}, {next}).ok());
        ASSERT_TRUE(model->ForwardMany({&settled}, {next}).ok());
        EXPECT_TRUE(settled.last_logits.equal(s.last_logits)) << where;
        EXPECT_EQ(MaxStateDiff(settled, s), 0.0) << where;
      }
    }
  }
}

// memory.num_heads: a memory with more heads than the attention (3 vs 2, each head_dim wide).
// Only the memory's shapes change (names and order stay, so titans-train's files and the Python
// reference's param_slots line up); the attention keeps num_heads; forward, split invariance and
// the fused-kernel path work over the memory's own heads.
ModelConfig MemoryHeadsConfig(Variant v, int memory_heads) {
  ModelConfig c = TinyConfig(v, 2, 4);
  c.memory.num_heads = memory_heads;
  return c;
}

TEST(MemoryHeads, ParamShapesUseTheMemoryHeadCount) {
  const ModelConfig c = MemoryHeadsConfig(Variant::kMAL, 3);
  ASSERT_TRUE(ValidateModelConfig(c).ok());
  ASSERT_EQ(c.memory_heads(0), 3);
  ASSERT_EQ(c.memory_heads(1), 3);
  const int64_t d = c.d_model, dh = c.head_dim, hd = c.num_heads * dh, mhd = 3 * dh;
  const int64_t K = c.memory.conv_kernel, hidden = c.memory_hidden();
  ModelParams params, plain_params;
  const std::vector<ParamSlot> slots = ParamSlots(c, &params);
  const std::vector<ParamSlot> plain = ParamSlots(TinyConfig(Variant::kMAL, 2, 4), &plain_params);
  ASSERT_EQ(slots.size(), plain.size());
  std::map<std::string, std::vector<int64_t>> expected;
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string m = "layers." + std::to_string(i) + ".memory.";
    const std::string a = "layers." + std::to_string(i) + ".attn.";
    for (const char* name :
         {"q_proj.weight", "k_proj.weight", "v_proj.weight", "out_gate.weight"}) {
      expected[m + name] = {mhd, d};
    }
    for (const char* name : {"q_conv.weight", "k_conv.weight", "v_conv.weight"}) {
      expected[m + name] = {mhd, K};
    }
    for (const char* gate : {"alpha", "eta", "theta"}) {
      expected[m + gate + "_proj.weight"] = {3, d};
      expected[m + gate + "_proj.bias"] = {3};
    }
    expected[m + "initial_weights.0"] = {3, hidden, dh};
    expected[m + "initial_weights.1"] = {3, dh, hidden};
    expected[m + "out_norm.weight"] = {mhd};
    expected[m + "out_proj.weight"] = {d, mhd};
    // The attention keeps num_heads.
    for (const char* name : {"wq.weight", "wk.weight", "wv.weight"}) expected[a + name] = {hd, d};
    expected[a + "wo.weight"] = {d, hd};
  }
  int memory_slots = 0, checked = 0;
  for (size_t i = 0; i < slots.size(); ++i) {
    // Same names in the same order as with the attention's head count; only shapes change.
    EXPECT_EQ(slots[i].name, plain[i].name);
    EXPECT_EQ(slots[i].init, plain[i].init) << slots[i].name;
    const bool memory = slots[i].name.find(".memory.") != std::string::npos;
    memory_slots += memory;
    auto it = expected.find(slots[i].name);
    if (it != expected.end()) {
      EXPECT_EQ(slots[i].shape, it->second) << slots[i].name;
      ++checked;
    } else {
      EXPECT_FALSE(memory) << slots[i].name << " has no expected shape";
      EXPECT_EQ(slots[i].shape, plain[i].shape) << slots[i].name;  // not the memory's
    }
  }
  EXPECT_EQ(checked, static_cast<int>(expected.size()));
  EXPECT_EQ(memory_slots, 2 * 17);  // 17 memory tensors per layer at depth 2
  // The random model holds tensors of those shapes.
  auto model = MakeModel(c, 5);
  ASSERT_NE(model, nullptr);
  const NeuralMemoryParams& m = model->params().layers[0].memory;
  EXPECT_EQ(m.q_proj.sizes(), at::IntArrayRef({mhd, d}));
  EXPECT_EQ(m.theta_b.sizes(), at::IntArrayRef({3}));
  EXPECT_EQ(m.initial_weights[0].sizes(), at::IntArrayRef({3, hidden, dh}));
  EXPECT_EQ(m.out_proj.sizes(), at::IntArrayRef({d, mhd}));
  EXPECT_EQ(model->params().layers[0].attn.wq.sizes(), at::IntArrayRef({hd, d}));
}

TEST(MemoryHeads, ForwardAndStateUseTheMemoryHeadCount) {
  for (Variant v : {Variant::kMAL, Variant::kMAG, Variant::kLMM}) {
    for (int memory_heads : {1, 3}) {
      const ModelConfig c = MemoryHeadsConfig(v, memory_heads);
      auto model = MakeModel(c, 13);
      ASSERT_NE(model, nullptr) << Name(v);
      at::NoGradGuard no_grad;
      SessionState s = model->NewState();
      const int64_t T = 37;  // 9 whole chunks and one token of the next; past the window
      const at::Tensor logits = ForwardAll(*model, &s, RandomTokens(1, T, 14));
      ASSERT_TRUE(logits.defined());
      EXPECT_EQ(logits.sizes(), at::IntArrayRef({1, T, c.vocab_size}));
      EXPECT_TRUE(at::isfinite(logits).all().item<bool>()) << Name(v);
      EXPECT_TRUE(ValidateSessionState(c, s).ok()) << Name(v) << ValidateSessionState(c, s);
      const int64_t dh = c.head_dim, hidden = c.memory_hidden(), p = T % c.memory.chunk_size;
      for (const LayerState& L0 : s.layers) {
        LayerState L = L0;
        MaterializeTails(&L);
        MaterializeCache(&L);
        ASSERT_EQ(L.memory.weights.size(), 2u);
        EXPECT_EQ(L.memory.weights[0].sizes(), at::IntArrayRef({memory_heads, hidden, dh}));
        EXPECT_EQ(L.memory.weights[1].sizes(), at::IntArrayRef({memory_heads, dh, hidden}));
        EXPECT_EQ(L.memory.momentum[1].sizes(), at::IntArrayRef({memory_heads, dh, hidden}));
        EXPECT_EQ(PendingInputs(L.memory, 0).sizes(), at::IntArrayRef({memory_heads, p, dh}));
        EXPECT_EQ(PendingDeltas(L.memory, 1).sizes(), at::IntArrayRef({memory_heads, p, dh}));
        EXPECT_EQ(PendingGates(L.memory).theta.sizes(), at::IntArrayRef({memory_heads, p}));
        const int64_t K1 = c.memory.conv_kernel - 1;
        for (const at::Tensor* tail : {&L.q_tail, &L.k_tail, &L.v_tail}) {
          EXPECT_EQ(tail->sizes(), at::IntArrayRef({1, K1, memory_heads * dh})) << Name(v);
        }
        if (v != Variant::kLMM) {  // the attention cache keeps num_heads
          EXPECT_EQ(L.attn_k.size(1), c.num_heads);
          EXPECT_EQ(L.attn_v.size(1), c.num_heads);
        }
      }
      // A state of the attention's head count is not this model's.
      ModelConfig plain = c;
      plain.memory.num_heads = 0;
      EXPECT_EQ(ValidateSessionState(plain, s).code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

// A stream in two calls gives the logits and state of one call (double precision, as in
// AppendSplitInvariance), and the fused kernel (fp32 serving) agrees with the LibTorch form.
void ExpectSplitInvariantAndKernelMatchesLibTorch(const ModelConfig& c) {
  const Variant v = c.variant;
  {
    auto model = MakeModel(c, 7, /*dbl=*/true);
    ASSERT_NE(model, nullptr);
    at::NoGradGuard no_grad;
    const at::Tensor tokens = RandomTokens(1, 50, 8);
    SessionState whole = model->NewState(), split = model->NewState();
    const at::Tensor expected = ForwardAll(*model, &whole, tokens);
    const at::Tensor a = ForwardAll(*model, &split, tokens.slice(1, 0, 23));
    const at::Tensor b = ForwardAll(*model, &split, tokens.slice(1, 23, 50));
    EXPECT_LT(MaxDiff(at::cat({a, b}, 1), expected), 1e-9) << Name(v);
    EXPECT_LT(MaxStateDiff(split, whole), 1e-9) << Name(v);
  }
  auto model = MakeModel(c, 17);
  ASSERT_NE(model, nullptr);
  const at::Tensor tokens = RandomTokens(1, 45, 18);
  SessionState kernel_state = model->NewState(), torch_state = model->NewState();
  at::Tensor kernel_logits, torch_logits;
  {
    at::NoGradGuard no_grad;  // -> the fused memory kernel over the packed heads
    kernel_logits = at::cat({ForwardAll(*model, &kernel_state, tokens.slice(1, 0, 30)),
                             ForwardAll(*model, &kernel_state, tokens.slice(1, 30, 45))},
                            1);
  }
  {
    at::AutoGradMode grad(true);  // -> MemoryWriteReadTorch
    torch_logits = at::cat({ForwardAll(*model, &torch_state, tokens.slice(1, 0, 30)),
                            ForwardAll(*model, &torch_state, tokens.slice(1, 30, 45))},
                           1);
  }
  EXPECT_LT(MaxDiff(kernel_logits, torch_logits.detach()), 2e-4) << Name(v);
  EXPECT_LT(MaxStateDiff(kernel_state, torch_state), 2e-4) << Name(v);
  // fp32 serving: the stream in two ForwardMany calls beside a session at another position
  // ends where the one call does (as in ForwardMany.SplitInvariantLogitsAndState).
  at::NoGradGuard no_grad;
  SessionState many = model->NewState(), other = model->NewState();
  ASSERT_TRUE(model->Forward(&other, RandomTokens(1, 6, 19)).ok());
  const int64_t* ids = tokens.data_ptr<int64_t>();
  const std::vector<int64_t> head(ids, ids + 17), rest(ids + 17, ids + 45);
  ASSERT_TRUE(model->ForwardMany({&many, &other}, {head, {ids[0]}}).ok());
  ASSERT_TRUE(model->ForwardMany({&many, &other}, {rest, {ids[1]}}).ok());
  if (BatchInvariantCpuKernels()) {
    EXPECT_TRUE(at::equal(many.last_logits, kernel_logits.select(1, 44))) << Name(v);
    EXPECT_EQ(MaxStateDiff(many, kernel_state), 0.0) << Name(v);
  } else {
    EXPECT_LT(MaxDiff(many.last_logits, kernel_logits.select(1, 44)), 2e-4) << Name(v);
    EXPECT_LT(MaxStateDiff(many, kernel_state), 2e-4) << Name(v);
  }
  // A batch of two streams in one Forward (groups b * Hm + h) gives what each gets alone.
  SessionState pair = model->NewState(2), first = model->NewState(), second = model->NewState();
  const at::Tensor two = RandomTokens(2, 21, 20);
  const at::Tensor both = ForwardAll(*model, &pair, two);
  EXPECT_LT(MaxDiff(both.slice(0, 0, 1), ForwardAll(*model, &first, two.slice(0, 0, 1))), 2e-4)
      << Name(v);
  EXPECT_LT(MaxDiff(both.slice(0, 1, 2), ForwardAll(*model, &second, two.slice(0, 1, 2))), 2e-4)
      << Name(v);
}

TEST(MemoryHeads, SplitInvariantAndKernelMatchesLibTorch) {
  for (Variant v : {Variant::kMAL, Variant::kLMM}) {
    ExpectSplitInvariantAndKernelMatchesLibTorch(MemoryHeadsConfig(v, 3));
  }
}

// memory.num_heads per layer ([2, 3]): each layer's memory tensors and state take that layer's
// count; split invariance, the fused kernel beside the LibTorch form and batching (as above), and
// the state's serialisation all work with layers of different widths.
TEST(MemoryHeads, PerLayerCountsShapeEachLayer) {
  for (Variant v : {Variant::kMAL, Variant::kLMM}) {
    ModelConfig c = TinyConfig(v, 2, 4);
    c.memory.layer_heads = {2, 3};
    ASSERT_TRUE(ValidateModelConfig(c).ok()) << ValidateModelConfig(c);
    ExpectSplitInvariantAndKernelMatchesLibTorch(c);
    const int64_t d = c.d_model, dh = c.head_dim, hidden = c.memory_hidden();
    auto model = MakeModel(c, 7);
    ASSERT_NE(model, nullptr) << Name(v);
    for (int i = 0; i < 2; ++i) {
      const int64_t Hm = i + 2;
      const NeuralMemoryParams& m = model->params().layers[i].memory;
      EXPECT_EQ(m.q_proj.sizes(), at::IntArrayRef({Hm * dh, d}));
      EXPECT_EQ(m.theta_b.sizes(), at::IntArrayRef({Hm}));
      EXPECT_EQ(m.initial_weights[0].sizes(), at::IntArrayRef({Hm, hidden, dh}));
      EXPECT_EQ(m.out_proj.sizes(), at::IntArrayRef({d, Hm * dh}));
    }
    at::NoGradGuard no_grad;
    SessionState state = model->NewState();
    ForwardAll(*model, &state, RandomTokens(1, 50, 8));
    for (int i = 0; i < 2; ++i) {
      LayerState L = state.layers[i];
      MaterializeTails(&L);
      const int64_t Hm = i + 2, p = 50 % c.memory.chunk_size;
      EXPECT_EQ(L.memory.weights[1].sizes(), at::IntArrayRef({Hm, dh, hidden})) << i;
      EXPECT_EQ(PendingInputs(L.memory, 0).sizes(), at::IntArrayRef({Hm, p, dh})) << i;
      EXPECT_EQ(L.k_tail.sizes(), at::IntArrayRef({1, c.memory.conv_kernel - 1, Hm * dh})) << i;
    }
    EXPECT_TRUE(ValidateSessionState(c, state).ok()) << ValidateSessionState(c, state);
    // The state is this model's and no other's: one count for every layer does not fit it.
    ModelConfig uniform = c;
    uniform.memory.layer_heads.clear();
    uniform.memory.num_heads = 3;
    EXPECT_EQ(ValidateSessionState(uniform, state).code(), absl::StatusCode::kInvalidArgument);
    // Serialised and read back, the state is the same state; the uniform model refuses it.
    auto blob = SerializeSessionState(c, state, "per-layer");
    ASSERT_TRUE(blob.ok()) << blob.status();
    auto restored = DeserializeSessionState(*blob, c, "per-layer");
    ASSERT_TRUE(restored.ok()) << restored.status();
    EXPECT_EQ(MaxStateDiff(*restored, state), 0.0) << Name(v);
    EXPECT_EQ(DeserializeSessionState(*blob, uniform, "per-layer").status().code(),
              absl::StatusCode::kInvalidArgument)
        << Name(v);
  }
}

}  // namespace
}  // namespace titans
