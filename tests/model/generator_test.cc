// Generation: reproducible with a seed, stops on stop strings / EOS / max tokens, cancellation,
// and generated tokens become part of the session.
#include "model/generator.h"

#include <gtest/gtest.h>

#include "tests/model/model_test_util.h"

namespace titans {
namespace {

using testing::MakeModel;
using testing::RandomTokens;
using testing::TinyConfig;

class GeneratorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = MakeModel(TinyConfig(Variant::kMAC), 5);
    at::NoGradGuard no_grad;
    prompted_ = model_->NewState();
    ASSERT_TRUE(model_->Forward(&prompted_, RandomTokens(1, 10, 9)).ok());
  }
  std::unique_ptr<TitansModel> model_;
  SessionState prompted_;
};

TEST_F(GeneratorTest, SeededSamplingIsReproducibleAndExtendsTheSession) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 1234;
  p.has_seed = true;
  p.max_tokens = 20;
  p.stop_at_eos = false;
  SessionState a = prompted_, b = prompted_;
  auto ra = Generate(*model_, &a, p);
  auto rb = Generate(*model_, &b, p);
  ASSERT_TRUE(ra.ok() && rb.ok());
  EXPECT_EQ(ra->tokens, rb->tokens);
  EXPECT_EQ(ra->tokens.size(), 20u);
  EXPECT_EQ(ra->finish_reason, FinishReason::kLength);
  EXPECT_EQ(a.position, prompted_.position + 20);
  // A different seed gives a different continuation (260-way sampling: equal is ~impossible).
  p.seed = 99;
  SessionState c = prompted_;
  auto rc = Generate(*model_, &c, p);
  ASSERT_TRUE(rc.ok());
  EXPECT_NE(rc->tokens, ra->tokens);
}

TEST_F(GeneratorTest, UnseededRunsContinueTheSessionRng) {
  SamplingParams p;
  p.max_tokens = 5;
  p.stop_at_eos = false;
  p.seed = 7;
  p.has_seed = true;
  SessionState a = prompted_;
  ASSERT_TRUE(Generate(*model_, &a, p).ok());
  // Two copies of a session continue identically without a seed: the RNG is session state.
  SessionState b = a;
  p.has_seed = false;
  auto ra = Generate(*model_, &a, p);
  auto rb = Generate(*model_, &b, p);
  ASSERT_TRUE(ra.ok() && rb.ok());
  EXPECT_EQ(ra->tokens, rb->tokens);
}

// The engine draws every decode of a step from one host copy of all sessions' logits
// (SampleFrom); that must draw exactly what Sample() draws from each session's own logits.
TEST_F(GeneratorTest, SamplingFromABatchedHostCopyMatchesSample) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.9f;
  p.seed = 31;
  p.has_seed = true;
  at::NoGradGuard no_grad;
  SessionState other = model_->NewState();
  ASSERT_TRUE(model_->Forward(&other, RandomTokens(1, 7, 4)).ok());
  std::vector<SessionState> alone = {prompted_, other}, batched = {prompted_, other};
  std::vector<TokenGenerator> alone_gen, batched_gen;
  for (int i = 0; i < 2; ++i) {
    alone_gen.push_back(*TokenGenerator::Start(*model_, &alone[i], p));
    batched_gen.push_back(*TokenGenerator::Start(*model_, &batched[i], p));
  }
  for (int step = 0; step < 8; ++step) {
    const at::Tensor host =
        at::cat({batched[0].last_logits, batched[1].last_logits}, 0).contiguous();  // [2, V]
    for (int i = 0; i < 2; ++i) {
      const int32_t want = alone_gen[i].Sample(&alone[i]);
      const int32_t got =
          batched_gen[i].SampleFrom(host.data_ptr<float>() + i * host.size(1), &batched[i]);
      ASSERT_EQ(got, want) << "session " << i << " step " << step;
      EXPECT_EQ(batched[i].rng_state, alone[i].rng_state);
      const at::Tensor token = at::full({1, 1}, static_cast<int64_t>(got), at::kLong);
      ASSERT_TRUE(model_->Forward(&alone[i], token).ok());
      ASSERT_TRUE(model_->Forward(&batched[i], token).ok());
    }
  }
}

TEST_F(GeneratorTest, GreedyMatchesArgmaxOfForward) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 6;
  p.stop_at_eos = false;
  SessionState a = prompted_;
  auto r = Generate(*model_, &a, p);
  ASSERT_TRUE(r.ok());
  SessionState b = prompted_;
  at::NoGradGuard no_grad;
  for (int32_t token : r->tokens) {
    EXPECT_EQ(b.last_logits.argmax(-1).item<int64_t>(), token);
    ASSERT_TRUE(model_->Forward(&b, at::full({1, 1}, int64_t{token}, at::kLong)).ok());
  }
}

TEST_F(GeneratorTest, StopStringEndsGenerationAndIsNotEmitted) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 30;
  p.stop_at_eos = false;
  SessionState a = prompted_;
  auto free_run = Generate(*model_, &a, p);
  ASSERT_TRUE(free_run.ok());
  // Use a piece of the greedy continuation as the stop string.
  std::string text;
  for (int32_t t : free_run->tokens) text += model_->tokenizer().TokenBytes(t);
  ASSERT_GE(text.size(), 8u);
  p.stop = {text.substr(4, 3)};
  SessionState b = prompted_;
  std::string streamed;
  auto r = Generate(*model_, &b, p, [&](int32_t, std::string_view delta) {
    streamed += delta;
    return true;
  });
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->finish_reason, FinishReason::kStop);
  EXPECT_EQ(r->text, streamed);
  EXPECT_EQ(r->text.find(p.stop[0]), std::string::npos);
  EXPECT_LE(r->tokens.size(), 7u);
}

TEST_F(GeneratorTest, EndOfSequenceStops) {
  // Make EOS overwhelmingly likely by boosting its logit in the state.
  SessionState a = prompted_;
  a.last_logits = a.last_logits.clone();
  a.last_logits[0][model_->tokenizer().eos_id()] = 1000.0f;
  SamplingParams p;
  p.temperature = 0;
  auto r = Generate(*model_, &a, p);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->finish_reason, FinishReason::kEndOfSequence);
  EXPECT_EQ(r->tokens, std::vector<int32_t>{model_->tokenizer().eos_id()});
  EXPECT_EQ(a.position, prompted_.position + 1);
}

TEST_F(GeneratorTest, CallbackCancels) {
  SamplingParams p;
  p.max_tokens = 50;
  p.stop_at_eos = false;
  SessionState a = prompted_;
  int calls = 0;
  auto r = Generate(*model_, &a, p, [&](int32_t, std::string_view) { return ++calls < 3; });
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(r->tokens.size(), 3u);
}

TEST_F(GeneratorTest, BadParamsLeaveSessionUntouched) {
  SamplingParams p;
  p.temperature = -1;
  SessionState a = prompted_;
  EXPECT_EQ(Generate(*model_, &a, p).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.position, prompted_.position);
}

TEST_F(GeneratorTest, EmptySessionStartsWithBos) {
  SessionState s = model_->NewState();
  SamplingParams p;
  p.max_tokens = 3;
  p.stop_at_eos = false;
  auto r = Generate(*model_, &s, p);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(s.position, 4);  // BOS + 3
  EXPECT_EQ(s.recent_tokens.front(), model_->tokenizer().bos_id());
}

}  // namespace
}  // namespace titans
