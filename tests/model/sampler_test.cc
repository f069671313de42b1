#include "model/sampler.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace titans {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

void ExpectInvalid(const SamplingParams& p, const std::string& field) {
  const absl::Status status = ValidateSamplingParams(p, 100);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << field;
  EXPECT_NE(status.message().find(field), std::string::npos) << status;
}

TEST(ValidateSamplingParamsTest, AcceptsDefaultsAndBounds) {
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams{}, 100).ok());
  SamplingParams p;
  p.temperature = 100;
  p.top_k = 100;
  p.top_p = 0.01f;
  p.min_p = 0.99f;
  p.repetition_penalty = 10;
  p.max_tokens = 1 << 20;
  p.stop = std::vector<std::string>(16, std::string(256, 'x'));
  EXPECT_TRUE(ValidateSamplingParams(p, 100).ok());
  p.temperature = 0;
  p.top_k = 0;
  p.max_tokens = 1;
  EXPECT_TRUE(ValidateSamplingParams(p, 100).ok());
  EXPECT_FALSE(ValidateSamplingParams(SamplingParams{}, 0).ok());
}

TEST(ValidateSamplingParamsTest, RejectsEachBadField) {
  auto with = [](auto mutate) {
    SamplingParams p;
    mutate(p);
    return p;
  };
  ExpectInvalid(with([](SamplingParams& p) { p.temperature = -0.1f; }), "temperature");
  ExpectInvalid(with([](SamplingParams& p) { p.temperature = 100.5f; }), "temperature");
  ExpectInvalid(with([](SamplingParams& p) { p.temperature = kNaN; }), "temperature");
  ExpectInvalid(with([](SamplingParams& p) { p.temperature = kInf; }), "temperature");
  ExpectInvalid(with([](SamplingParams& p) { p.top_k = -1; }), "top_k");
  ExpectInvalid(with([](SamplingParams& p) { p.top_k = 101; }), "top_k");
  ExpectInvalid(with([](SamplingParams& p) { p.top_p = 0; }), "top_p");
  ExpectInvalid(with([](SamplingParams& p) { p.top_p = 1.01f; }), "top_p");
  ExpectInvalid(with([](SamplingParams& p) { p.top_p = kNaN; }), "top_p");
  ExpectInvalid(with([](SamplingParams& p) { p.min_p = -0.1f; }), "min_p");
  ExpectInvalid(with([](SamplingParams& p) { p.min_p = 1; }), "min_p");
  ExpectInvalid(with([](SamplingParams& p) { p.min_p = kNaN; }), "min_p");
  ExpectInvalid(with([](SamplingParams& p) { p.repetition_penalty = 0; }), "repetition_penalty");
  ExpectInvalid(with([](SamplingParams& p) { p.repetition_penalty = 10.5f; }),
                "repetition_penalty");
  ExpectInvalid(with([](SamplingParams& p) { p.repetition_penalty = kNaN; }), "repetition_penalty");
  ExpectInvalid(with([](SamplingParams& p) { p.max_tokens = 0; }), "max_tokens");
  ExpectInvalid(with([](SamplingParams& p) { p.max_tokens = (1 << 20) + 1; }), "max_tokens");
  ExpectInvalid(with([](SamplingParams& p) { p.stop = std::vector<std::string>(17, "x"); }),
                "stop");
  ExpectInvalid(with([](SamplingParams& p) { p.stop = {"ok", ""}; }), "stop[1]");
  ExpectInvalid(with([](SamplingParams& p) { p.stop = {std::string(257, 'x')}; }), "stop[0]");
}

TEST(RngTest, KnownAnswerAndRestore) {
  Rng rng(42);
  // xoshiro256** seeded via splitmix64(42), computed independently.
  EXPECT_EQ(rng.Next(), 0x15780b2e0c2ec716ULL);
  EXPECT_EQ(rng.Next(), 0x6104d9866d113a7eULL);
  EXPECT_EQ(rng.Next(), 0xae17533239e499a1ULL);

  const Rng::State saved = rng.state();
  std::vector<uint64_t> expected;
  for (int i = 0; i < 100; ++i) expected.push_back(rng.Next());
  auto restored = Rng::FromState(saved);
  ASSERT_TRUE(restored.ok());
  for (int i = 0; i < 100; ++i) EXPECT_EQ(restored->Next(), expected[i]);
  EXPECT_EQ(Rng::FromState(Rng::State{}).status().code(), absl::StatusCode::kInvalidArgument);

  for (int i = 0; i < 10000; ++i) {
    const double d = rng.NextDouble();
    ASSERT_GE(d, 0.0);
    ASSERT_LT(d, 1.0);
  }
}

TEST(SampleTokenTest, GreedyPicksArgmaxLowestIdOnTies) {
  SamplingParams p;
  p.temperature = 0;
  const std::vector<float> logits = {1.0f, 3.0f, -2.0f, 3.0f, kNaN};
  EXPECT_EQ(SampleToken(logits.data(), 5, p, {}, nullptr), 1);
  const std::vector<float> with_inf = {1.0f, -kInf, kInf, 2.0f};
  EXPECT_EQ(SampleToken(with_inf.data(), 4, p, {}, nullptr), 2);
  // Repetition penalty applies in greedy mode too: 3 / 2 < 2.
  const std::vector<float> rep = {2.0f, 3.0f};
  p.repetition_penalty = 2.0f;
  EXPECT_EQ(SampleToken(rep.data(), 2, p, {1, 1}, nullptr), 0);
}

TEST(SampleTokenTest, AllInvalidFallsBackToZero) {
  Rng rng(1);
  const std::vector<float> logits = {-kInf, kNaN, -kInf};
  SamplingParams p;
  EXPECT_EQ(SampleToken(logits.data(), 3, p, {}, &rng), 0);
  p.temperature = 0;
  EXPECT_EQ(SampleToken(logits.data(), 3, p, {}, &rng), 0);
}

std::vector<float> RandomLogits(int n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> logits(n);
  for (float& x : logits) x = static_cast<float>(rng.NextDouble() * 8.0 - 4.0);
  return logits;
}

TEST(SampleTokenTest, ReproducibleWithSeedAndRestoredState) {
  const std::vector<float> logits = RandomLogits(1000, 3);
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_p = 0.9f;
  p.top_k = 200;
  p.min_p = 0.01f;
  p.repetition_penalty = 1.3f;
  std::vector<int32_t> recent = {5, 17, 999};
  Rng a(1234), b(1234);
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ(SampleToken(logits.data(), 1000, p, recent, &a),
              SampleToken(logits.data(), 1000, p, recent, &b));
  }
  auto c = Rng::FromState(a.state());
  ASSERT_TRUE(c.ok());
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ(SampleToken(logits.data(), 1000, p, recent, &a),
              SampleToken(logits.data(), 1000, p, recent, &*c));
  }
}

TEST(SampleTokenTest, TopK1AndTinyTopPEqualGreedy) {
  SamplingParams greedy;
  greedy.temperature = 0;
  SamplingParams top_k1;
  top_k1.top_k = 1;
  SamplingParams tiny_p;
  tiny_p.top_p = 1e-6f;
  Rng rng(9);
  for (uint64_t seed = 0; seed < 50; ++seed) {
    const std::vector<float> logits = RandomLogits(500, seed);
    const int32_t best = SampleToken(logits.data(), 500, greedy, {}, nullptr);
    EXPECT_EQ(SampleToken(logits.data(), 500, top_k1, {}, &rng), best);
    EXPECT_EQ(SampleToken(logits.data(), 500, tiny_p, {}, &rng), best);
  }
}

// Draws `n` samples and returns the empirical frequency of each token.
std::vector<double> Frequencies(const std::vector<float>& logits, const SamplingParams& p, int n,
                                uint64_t seed) {
  Rng rng(seed);
  std::vector<double> freq(logits.size(), 0.0);
  for (int i = 0; i < n; ++i) {
    freq[SampleToken(logits.data(), static_cast<int32_t>(logits.size()), p, {}, &rng)] += 1.0;
  }
  for (double& f : freq) f /= n;
  return freq;
}

std::vector<double> Softmax(const std::vector<float>& logits, double temperature) {
  std::vector<double> p;
  double total = 0;
  for (float x : logits) total += std::exp(x / temperature);
  for (float x : logits) p.push_back(std::exp(x / temperature) / total);
  return p;
}

// 20000 draws: the standard error of each frequency is <= 0.0036, so 0.02 is over 5 sigma.
constexpr int kDraws = 20000;
constexpr double kTolerance = 0.02;

TEST(SampleTokenTest, FrequenciesMatchSoftmax) {
  const std::vector<float> logits = {std::log(0.1f), std::log(0.2f), std::log(0.3f),
                                     std::log(0.4f)};
  for (double temperature : {1.0, 0.5, 2.0}) {
    SamplingParams p;
    p.temperature = static_cast<float>(temperature);
    const std::vector<double> freq = Frequencies(logits, p, kDraws, 77);
    const std::vector<double> expected = Softmax(logits, temperature);
    for (size_t i = 0; i < logits.size(); ++i) {
      EXPECT_NEAR(freq[i], expected[i], kTolerance) << "T=" << temperature << " token " << i;
    }
  }
  // Lower temperature sharpens: at T=0.5 the probabilities are proportional to p^2.
  SamplingParams cold;
  cold.temperature = 0.5f;
  const std::vector<double> freq = Frequencies(logits, cold, kDraws, 5);
  EXPECT_NEAR(freq[3], 0.16 / 0.30, kTolerance);
  EXPECT_NEAR(freq[0], 0.01 / 0.30, kTolerance);
}

TEST(SampleTokenTest, TopKTopPMinPFilter) {
  const std::vector<float> logits = {std::log(0.1f), std::log(0.2f), std::log(0.3f), std::log(0.4f),
                                     -kInf};
  SamplingParams top_k;
  top_k.top_k = 2;  // Tokens 3 and 2, renormalised: 4/7 and 3/7.
  std::vector<double> freq = Frequencies(logits, top_k, kDraws, 11);
  EXPECT_EQ(freq[0], 0.0);
  EXPECT_EQ(freq[1], 0.0);
  EXPECT_EQ(freq[4], 0.0);
  EXPECT_NEAR(freq[3], 4.0 / 7.0, kTolerance);

  SamplingParams top_p;
  top_p.top_p = 0.65f;  // 0.4 + 0.3 = 0.7 >= 0.65: tokens 3 and 2.
  freq = Frequencies(logits, top_p, kDraws, 12);
  EXPECT_EQ(freq[0] + freq[1] + freq[4], 0.0);
  EXPECT_NEAR(freq[3], 4.0 / 7.0, kTolerance);

  SamplingParams min_p;
  min_p.min_p = 0.4f;  // Keep p >= 0.16: tokens 1, 2, 3.
  freq = Frequencies(logits, min_p, kDraws, 13);
  EXPECT_EQ(freq[0] + freq[4], 0.0);
  EXPECT_NEAR(freq[1], 2.0 / 9.0, kTolerance);
}

TEST(SampleTokenTest, RepetitionPenaltyLowersRecentTokens) {
  const std::vector<float> logits = {1.0f, 1.0f, -1.0f, -1.0f};
  SamplingParams p;
  p.repetition_penalty = 2.0f;  // Token 0: 1 -> 0.5; token 2: -1 -> -2.
  Rng rng(8);
  std::vector<double> freq(4, 0.0);
  for (int i = 0; i < kDraws; ++i) freq[SampleToken(logits.data(), 4, p, {0, 2, 0, 42}, &rng)]++;
  const std::vector<double> expected = Softmax({0.5f, 1.0f, -2.0f, -1.0f}, 1.0);
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(freq[i] / kDraws, expected[i], kTolerance) << i;
}

TEST(SampleTokenTest, LargeVocabularyTopP) {
  // Exercises the progressive partial sort: the nucleus is larger than its first prefix.
  const std::vector<float> logits(5000, 0.0f);  // Uniform.
  SamplingParams p;
  p.top_p = 0.5f;
  Rng rng(21);
  for (int i = 0; i < 200; ++i) {
    EXPECT_LT(SampleToken(logits.data(), 5000, p, {}, &rng), 2500);  // Ties -> lowest ids.
  }
}

// Feeds `text` split at the given cut points and returns the emitted text.
std::string FeedSplit(const std::vector<std::string>& stops, const std::string& text,
                      const std::vector<size_t>& cuts, bool* stopped) {
  StopMatcher matcher(stops);
  std::string out;
  size_t prev = 0;
  *stopped = false;
  std::vector<size_t> all_cuts = cuts;
  all_cuts.push_back(text.size());
  for (size_t cut : all_cuts) {
    bool s = false;
    out += matcher.Feed(text.substr(prev, cut - prev), &s);
    prev = cut;
    if (s) {
      *stopped = true;
      return out;
    }
  }
  return out + matcher.Flush();
}

// Checks the matcher against the expected result for every one- and two-cut split.
void ExpectStop(const std::vector<std::string>& stops, const std::string& text,
                const std::string& expected, bool expect_stopped) {
  for (size_t i = 0; i <= text.size(); ++i) {
    for (size_t j = i; j <= text.size(); ++j) {
      bool stopped = false;
      EXPECT_EQ(FeedSplit(stops, text, {i, j}, &stopped), expected)
          << "text=" << text << " cuts=" << i << "," << j;
      EXPECT_EQ(stopped, expect_stopped) << "text=" << text << " cuts=" << i << "," << j;
    }
  }
}

TEST(StopMatcherTest, SplitAtEveryPosition) {
  ExpectStop({"STOP"}, "hello STOP world", "hello ", true);
  ExpectStop({"STOP"}, "hello STO world", "hello STO world", false);
  ExpectStop({"STOP"}, "STOP", "", true);
  ExpectStop({"STOP"}, "no stop here ST", "no stop here ST", false);
  ExpectStop({}, "anything", "anything", false);
}

TEST(StopMatcherTest, OverlappingPrefixes) {
  ExpectStop({"ab"}, "xaab", "xa", true);
  ExpectStop({"aab"}, "xaaab", "xa", true);
  ExpectStop({"ab", "aab"}, "xaab", "x", true);  // Both end together: the longer one wins.
  ExpectStop({"aab"}, "xaac", "xaac", false);
}

TEST(StopMatcherTest, MultipleStopStrings) {
  ExpectStop({"END", "\n\n"}, "line one\n\nEND", "line one", true);
  ExpectStop({"END", "\n\n"}, "one END\n\n", "one ", true);
  // "bc" completes before "abcd" does, regardless of how the text is split.
  ExpectStop({"abcd", "bc"}, "xabcd", "xa", true);
}

TEST(StopMatcherTest, HoldsBackOnlyPossiblePrefixes) {
  StopMatcher matcher({"<|end|>"});
  bool stopped = true;
  EXPECT_EQ(matcher.Feed("abc<|e", &stopped), "abc");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(matcher.Feed("x", &stopped), "<|ex");
  EXPECT_EQ(matcher.Feed("<|end", &stopped), "");
  EXPECT_EQ(matcher.Feed("|>tail", &stopped), "");
  EXPECT_TRUE(stopped);
  EXPECT_TRUE(matcher.stopped());
  EXPECT_EQ(matcher.Feed("more", &stopped), "");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(matcher.Flush(), "");
}

}  // namespace
}  // namespace titans
