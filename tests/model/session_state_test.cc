// Session-state serialisation: bit-exact round trips for every variant, and hostile blobs
// (corrupted, truncated, from another model, misshapen) give errors, never crashes.
#include "model/session_state.h"

#include <gtest/gtest.h>

#include <random>

#include "model/sampler.h"
#include "model/titans_model.h"
#include "tests/model/model_test_util.h"

namespace titans {
namespace {

using testing::MakeModel;
using testing::MaxStateDiff;
using testing::Name;
using testing::RandomTokens;
using testing::TinyConfig;

bool BitEqual(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(),
                     a.numel() * a.element_size()) == 0;
}

TEST(SessionStateSerialization, RoundTripIsBitExactAndContinuesIdentically) {
  for (Variant v : {Variant::kMAC, Variant::kMAG, Variant::kMAL, Variant::kLMM, Variant::kSWA}) {
    auto model = MakeModel(TinyConfig(v, 3, 4));
    at::NoGradGuard no_grad;
    SessionState s = model->NewState();
    // 13 tokens: mid-chunk, mid-segment, partial window: every pending structure is non-empty.
    ASSERT_TRUE(model->Forward(&s, RandomTokens(1, 13, 1)).ok());
    s.rng_state = Rng(42).state();
    auto blob = SerializeSessionState(model->config(), s, model->fingerprint());
    ASSERT_TRUE(blob.ok()) << blob.status();
    auto back = DeserializeSessionState(*blob, model->config(), model->fingerprint());
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->position, 13);
    EXPECT_EQ(back->rng_state, s.rng_state);
    EXPECT_EQ(back->recent_tokens, s.recent_tokens);
    testing::ForEachStateTensor(
        s, *back, [&](const std::string& name, const at::Tensor& a, const at::Tensor& b) {
          EXPECT_TRUE(BitEqual(a, b)) << Name(v) << " " << name;
        });
    // Serialising again gives the same bytes.
    auto again = SerializeSessionState(model->config(), *back, model->fingerprint());
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *blob);
    // Both continue identically, bit for bit.
    at::Tensor more = RandomTokens(1, 9, 2);
    auto a = model->Forward(&s, more, LogitsMode::kAll);
    auto b = model->Forward(&*back, more, LogitsMode::kAll);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_TRUE(BitEqual(*a, *b)) << Name(v);
    EXPECT_EQ(MaxStateDiff(s, *back), 0.0);
  }
}

// A memory with its own head count (memory.num_heads 3, attention 2): the state's memory tensors
// carry 3 heads, round-trip bit for bit and continue identically; a blob of it does not load
// into a model of the attention's head count.
TEST(SessionStateSerialization, MemoryHeadsRoundTripBitExact) {
  for (Variant v : {Variant::kMAL, Variant::kLMM}) {
    ModelConfig c = TinyConfig(v, 2, 4);
    c.memory.num_heads = 3;
    auto model = MakeModel(c, 4);
    ASSERT_NE(model, nullptr);
    at::NoGradGuard no_grad;
    SessionState s = model->NewState();
    ASSERT_TRUE(model->Forward(&s, RandomTokens(1, 13, 5)).ok());  // mid-chunk
    ASSERT_EQ(s.layers[0].memory.weights[0].size(0), 3);
    ASSERT_EQ(s.layers[0].q_tail.size(2), 3 * c.head_dim);
    auto blob = SerializeSessionState(model->config(), s, model->fingerprint());
    ASSERT_TRUE(blob.ok()) << blob.status();
    auto back = DeserializeSessionState(*blob, model->config(), model->fingerprint());
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->position, 13);
    int tensors = 0;
    testing::ForEachStateTensor(
        s, *back, [&](const std::string& name, const at::Tensor& a, const at::Tensor& b) {
          EXPECT_TRUE(BitEqual(a, b)) << Name(v) << " " << name;
          ++tensors;
        });
    EXPECT_GT(tensors, 0);
    auto again = SerializeSessionState(model->config(), *back, model->fingerprint());
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *blob);
    at::Tensor more = RandomTokens(1, 9, 6);
    auto a = model->Forward(&s, more, LogitsMode::kAll);
    auto b = model->Forward(&*back, more, LogitsMode::kAll);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_TRUE(BitEqual(*a, *b)) << Name(v);
    EXPECT_EQ(MaxStateDiff(s, *back), 0.0);
    // The attention's head count (2) gives other shapes: refused, not misread.
    ModelConfig plain = c;
    plain.memory.num_heads = 0;
    absl::Status st = DeserializeSessionState(*blob, plain, model->fingerprint()).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  }
}

// States at every position of a few segments serialise (the MAC cache and segment weights are
// canonical at segment boundaries, too).
TEST(SessionStateSerialization, EveryPositionSerialises) {
  for (Variant v : {Variant::kMAC, Variant::kMAG}) {
    auto model = MakeModel(TinyConfig(v, 2, 4));
    at::NoGradGuard no_grad;
    SessionState s = model->NewState();
    for (int t = 0; t < 26; ++t) {
      ASSERT_TRUE(model->Forward(&s, RandomTokens(1, 1, 200 + t)).ok());
      auto blob = SerializeSessionState(model->config(), s, model->fingerprint());
      ASSERT_TRUE(blob.ok()) << Name(v) << " position " << s.position << ": " << blob.status();
    }
  }
}

class HostileBlobs : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = MakeModel(TinyConfig(Variant::kMAC));
    at::NoGradGuard no_grad;
    SessionState s = model_->NewState();
    ASSERT_TRUE(model_->Forward(&s, RandomTokens(1, 11, 3)).ok());
    blob_ = *SerializeSessionState(model_->config(), s, model_->fingerprint());
  }
  absl::Status Decode(std::string_view blob) {
    return DeserializeSessionState(blob, model_->config(), model_->fingerprint()).status();
  }
  std::unique_ptr<TitansModel> model_;
  std::string blob_;
};

TEST_F(HostileBlobs, EveryTruncationIsDataLoss) {
  for (size_t len = 0; len < blob_.size(); len += std::max<size_t>(1, len / 64)) {
    absl::Status st = Decode(std::string_view(blob_).substr(0, len));
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << "length " << len << ": " << st;
  }
}

TEST_F(HostileBlobs, FlippedBytesAreDetected) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    std::string bad = blob_;
    const size_t pos = rng() % bad.size();
    bad[pos] = static_cast<char>(bad[pos] ^ (1 + rng() % 255));
    EXPECT_FALSE(Decode(bad).ok()) << "flip at " << pos;
  }
}

TEST_F(HostileBlobs, OtherModelIsFailedPrecondition) {
  absl::Status st = DeserializeSessionState(blob_, model_->config(), "other-model").status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("other-model"), std::string::npos);
}

TEST_F(HostileBlobs, WrongConfigShapesAreInvalidArgument) {
  ModelConfig other = model_->config();
  other.memory.depth = 3;  // a state with more memory layers than the blob has
  absl::Status st = DeserializeSessionState(blob_, other, model_->fingerprint()).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
}

TEST_F(HostileBlobs, GarbageAndEmpty) {
  EXPECT_EQ(Decode("").code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(Decode(std::string(100, 'x')).code(), absl::StatusCode::kDataLoss);
  std::string wrong_version = blob_;
  wrong_version[8] = 9;
  EXPECT_EQ(Decode(wrong_version).code(), absl::StatusCode::kFailedPrecondition);
}

// Intact (checksummed) but crafted blobs: a position beyond kMaxPosition whose shapes are
// consistent with it, and non-finite tensors, are refused on import; a session at the bound
// refuses further tokens with OUT_OF_RANGE and stays unchanged.
TEST(SessionStateSerialization, CraftedPositionsAndNonFiniteTensorsAreRefused) {
  for (Variant v : {Variant::kMAC, Variant::kMAL}) {
    auto model = MakeModel(TinyConfig(v, 2, 4));
    at::NoGradGuard no_grad;
    SessionState s = model->NewState();
    ASSERT_TRUE(model->Forward(&s, RandomTokens(1, 21, 3)).ok());
    // 21 + 2^61: congruent modulo every chunk, segment and window length of the config.
    SessionState far = s;
    far.position = 21 + (int64_t{1} << 61);
    auto blob = SerializeSessionState(model->config(), far, model->fingerprint());
    ASSERT_TRUE(blob.ok()) << blob.status();
    auto back = DeserializeSessionState(*blob, model->config(), model->fingerprint());
    EXPECT_EQ(back.status().code(), absl::StatusCode::kInvalidArgument) << Name(v);
    EXPECT_NE(back.status().message().find("position"), std::string::npos);

    SessionState nan = s;
    nan.layers[0].attn_k = at::full_like(nan.layers[0].attn_k, NAN);
    if (v == Variant::kMAL) {
      nan.layers[1].memory.weights[0] = at::full_like(nan.layers[1].memory.weights[0], INFINITY);
    }
    blob = SerializeSessionState(model->config(), nan, model->fingerprint());
    ASSERT_TRUE(blob.ok()) << blob.status();
    back = DeserializeSessionState(*blob, model->config(), model->fingerprint());
    EXPECT_EQ(back.status().code(), absl::StatusCode::kInvalidArgument) << Name(v);
    EXPECT_NE(back.status().message().find("non-finite"), std::string::npos);

    // At the bound, Forward and ForwardMany refuse and leave the state as it was.
    SessionState edge = s;
    edge.position = s.position + ((SessionState::kMaxPosition - s.position) / 24) * 24;
    ASSERT_LE(edge.position, SessionState::kMaxPosition);
    const int64_t at_edge = edge.position;
    auto over = model->Forward(&edge, RandomTokens(1, SessionState::kMaxPosition - at_edge + 1, 4));
    EXPECT_EQ(over.status().code(), absl::StatusCode::kOutOfRange);
    EXPECT_EQ(edge.position, at_edge);
    std::vector<absl::Status> statuses;
    SessionState other = s;
    ASSERT_TRUE(
        model
            ->ForwardMany({&edge, &other},
                          {std::vector<int64_t>(SessionState::kMaxPosition - at_edge + 1, 7),
                           std::vector<int64_t>(3, 7)},
                          &statuses)
            .ok());
    EXPECT_EQ(statuses[0].code(), absl::StatusCode::kOutOfRange);
    EXPECT_TRUE(statuses[1].ok());
    EXPECT_EQ(edge.position, at_edge);
    EXPECT_EQ(other.position, s.position + 3);
  }
}

TEST(SessionStateValidation, DetectsMisshapenTensors) {
  auto model = MakeModel(TinyConfig(Variant::kMAG));
  at::NoGradGuard no_grad;
  SessionState s = model->NewState();
  ASSERT_TRUE(model->Forward(&s, RandomTokens(1, 5, 3)).ok());
  EXPECT_TRUE(ValidateSessionState(model->config(), s).ok());
  SessionState bad = s;
  bad.layers[1].memory.momentum[0] = at::zeros({1, 2, 3});
  absl::Status st = ValidateSessionState(model->config(), bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("layers.1.memory.momentum.0"), std::string::npos) << st;
  bad = s;
  bad.position = 6;  // pending tokens no longer match the position
  EXPECT_FALSE(ValidateSessionState(model->config(), bad).ok());
}

}  // namespace
}  // namespace titans
