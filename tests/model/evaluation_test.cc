// Evaluation helpers: bits per byte of a stream (consistent with a one-call Forward, skip
// honoured) and the passkey harness (counts tasks, decodes, stays in [0, 1]).
#include "model/evaluation.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "model/trainer.h"
#include "tests/model/model_test_util.h"

namespace titans::testing {
namespace {

TEST(StreamBitsPerByte, PiecesAgreeAndSkipExcludesContext) {
  auto model = MakeModel(TinyConfig(Variant::kMAC), 2);
  std::string text;
  for (int i = 0; i < 40; ++i) text += "abc def ghi " + std::to_string(i);
  auto whole = StreamBitsPerByte(*model, text, 1 << 20);
  auto pieces = StreamBitsPerByte(*model, text, 7);
  ASSERT_TRUE(whole.ok() && pieces.ok());
  EXPECT_GT(*whole, 0);
  EXPECT_NEAR(*whole, *pieces, 1e-4);  // the stream is split-invariant
  // An untrained byte model is near uniform: log2(260) ~ 8.02 bits.
  EXPECT_LT(std::abs(*whole - std::log2(260.0)), 2.0);
  auto skipped = StreamBitsPerByte(*model, text, 64, 100);
  ASSERT_TRUE(skipped.ok());
  EXPECT_NE(*skipped, *whole);
  EXPECT_EQ(StreamBitsPerByte(*model, text, 64, 1 << 20).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Per-prediction losses: one per predicted token, each the model's own log-probability, and
// ranges of them average to the whole stream's bits per byte.
TEST(StreamNatsPerToken, OneLossPerPredictionAndRangesAverageToTheWhole) {
  auto model = MakeModel(TinyConfig(Variant::kMAL), 4);
  std::string text;
  for (int i = 0; i < 30; ++i) text += "stream " + std::to_string(i * 37 % 11) + "; ";
  auto nats = StreamNatsPerToken(*model, text, 16);
  ASSERT_TRUE(nats.ok()) << nats.status();
  ASSERT_EQ(nats->size(), text.size() - 1);
  // Prediction 9 is of byte 10, from a fresh session that has read bytes 0..9.
  {
    at::NoGradGuard no_grad;
    auto tokens = model->tokenizer().Encode(text.substr(0, 11), false);
    ASSERT_TRUE(tokens.ok());
    std::vector<int64_t> ids(tokens->begin(), tokens->end() - 1);
    SessionState state = model->NewState();
    auto logits = model->Forward(&state, at::tensor(ids).unsqueeze(0));
    ASSERT_TRUE(logits.ok());
    const double expected =
        -at::log_softmax(logits->reshape({-1}).to(at::kDouble), 0)[tokens->back()].item<double>();
    EXPECT_NEAR((*nats)[9], expected, 1e-4);
  }
  const int64_t n = static_cast<int64_t>(nats->size());
  auto whole = StreamBitsPerByte(*model, text, 16);
  ASSERT_TRUE(whole.ok());
  EXPECT_NEAR(BitsPerByteOver(*nats, 0, n), *whole, 1e-12);
  const double first = BitsPerByteOver(*nats, 0, 100), rest = BitsPerByteOver(*nats, 100, n);
  EXPECT_NEAR((first * 100 + rest * static_cast<double>(n - 100)) / static_cast<double>(n), *whole,
              1e-9);
  EXPECT_EQ(BitsPerByteOver(*nats, n, n + 10), -1);               // past the end: empty
  EXPECT_NEAR(BitsPerByteOver(*nats, -5, n + 5), *whole, 1e-12);  // clamped
  EXPECT_EQ(StreamNatsPerToken(*model, "a").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PasskeyAccuracy, RunsEveryTrialAndReportsAFraction) {
  auto model = MakeModel(TinyConfig(Variant::kMAG), 2);
  std::string filler;
  for (int i = 0; i < 100; ++i) filler += "the grass is green and the sky is blue. ";
  auto r = PasskeyAccuracy(*model, filler, 600, 3, 1);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->trials, 3);
  EXPECT_EQ(r->length, 600);
  EXPECT_GE(r->accuracy(), 0.0);
  EXPECT_LE(r->accuracy(), 1.0);
}

// The recall harness scores exactly the greedy predictions at the answer bytes: recomputed here
// from one Forward over each whole task (the harness feeds it in pieces up to every answer).
TEST(RecallAccuracy, CountsEveryFactAndMatchesAOnePassRead) {
  auto model = MakeModel(TinyConfig(Variant::kMAL), 3);
  std::string filler;
  for (int i = 0; i < 60; ++i) filler += "the grass is green and the sky is blue. ";
  constexpr int kPairs = 4, kTrials = 3;
  constexpr int64_t kGap = 300;
  auto r = RecallAccuracy(*model, filler, kPairs, kGap, kTrials, 5);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->trials, kTrials);
  EXPECT_EQ(r->facts, kPairs * kTrials);
  EXPECT_EQ(r->filler_bytes, kGap);
  // The same tasks, drawn from the same seed as the harness draws them.
  std::mt19937_64 rng(5);
  std::vector<int> right_by_question(kPairs, 0);
  int expected = 0, first_right = 0, other_fact = 0;
  double by_chance = 0;
  // Wrong first digits by where their fact was stated: before / after the asked one, the previous
  // question's fact, and the fact stated after that one.
  int neighbour_hits[4] = {0, 0, 0, 0};
  double neighbour_chance[4] = {0, 0, 0, 0};
  for (int t = 0; t < kTrials; ++t) {
    RecallTask task = MakeRecallTask(filler, kGap + 16 + 16 * kPairs, kGap, &rng);
    ASSERT_EQ(task.answers.size(), 2u * kPairs);
    auto tokens = model->tokenizer().Encode(task.text, false);
    ASSERT_TRUE(tokens.ok());
    at::NoGradGuard no_grad;
    SessionState state = model->NewState();
    std::vector<int64_t> ids(tokens->begin(), tokens->end());
    auto logits = model->Forward(&state, at::tensor(ids).unsqueeze(0), LogitsMode::kAll);
    ASSERT_TRUE(logits.ok());
    at::Tensor best = logits->squeeze(0).argmax(-1);
    // The statement, "name=vv, " kPairs times: each name's first value digit, in stated order.
    std::vector<std::string> names;
    std::vector<int64_t> stated_digit;
    for (int p = 0; p < kPairs; ++p) {
      const std::string pair = task.text.substr(static_cast<size_t>(8 * p), 8);
      ASSERT_EQ(pair.substr(3, 1), "=");
      names.push_back(pair.substr(0, 3));
      stated_digit.push_back((*tokens)[static_cast<size_t>(8 * p + 4)]);
    }
    const auto index_of = [&](int64_t answer) {
      const std::string name = task.text.substr(static_cast<size_t>(answer - 4), 3);
      return static_cast<int>(std::find(names.begin(), names.end(), name) - names.begin());
    };
    for (size_t f = 0; f < task.answers.size(); f += 2) {
      const int64_t a = task.answers[f], b = task.answers[f + 1];
      const int64_t first = best[a - 1].item<int64_t>();
      expected += first == (*tokens)[a] && best[b - 1].item<int64_t>() == (*tokens)[b];
      first_right += first == (*tokens)[a];
      right_by_question[f / 2] += first == (*tokens)[a];
      if (first == (*tokens)[a]) continue;
      std::set<int64_t> others;
      for (size_t g = 0; g < task.answers.size(); g += 2) {
        if (g != f && (*tokens)[task.answers[g]] != (*tokens)[a]) {
          others.insert((*tokens)[task.answers[g]]);
        }
      }
      other_fact += others.count(first) > 0;
      by_chance += static_cast<double>(others.size()) / 9;
      const int asked = index_of(a);
      const int previous = f >= 2 ? index_of(task.answers[f - 2]) : -100;
      const int candidates[4] = {asked - 1, asked + 1, previous, previous + 1};
      for (int c = 0; c < 4; ++c) {
        const int i = candidates[c];
        if (i < 0 || i >= kPairs || stated_digit[static_cast<size_t>(i)] == (*tokens)[a]) continue;
        neighbour_hits[c] += first == stated_digit[static_cast<size_t>(i)];
        neighbour_chance[c] += 1.0 / 9;
      }
    }
  }
  EXPECT_EQ(r->facts_correct, expected);
  EXPECT_EQ(r->first_digits_correct, first_right);
  EXPECT_EQ(r->first_digits_of_other_facts, other_fact);
  EXPECT_NEAR(r->first_digits_of_other_facts_by_chance, by_chance, 1e-9);
  const RecallResult::Neighbour* neighbours[4] = {&r->stated_before, &r->stated_after,
                                                  &r->last_answer, &r->after_last_answer};
  for (int c = 0; c < 4; ++c) {
    EXPECT_EQ(neighbours[c]->hits, neighbour_hits[c]) << c;
    EXPECT_NEAR(neighbours[c]->by_chance, neighbour_chance[c], 1e-9) << c;
  }
  EXPECT_EQ(r->first_digits_correct_by_question, right_by_question);
  EXPECT_EQ(r->asked_by_question, std::vector<int>(kPairs, kTrials));
  // Some wrong answers were made, so the counters were exercised (an untrained model).
  EXPECT_GT(neighbour_chance[1], 0);
  EXPECT_LE(r->facts_correct, r->first_digits_correct);
  EXPECT_EQ(RecallAccuracy(*model, filler, 0, kGap, 1, 5).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace titans::testing
