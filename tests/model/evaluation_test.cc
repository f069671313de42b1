// Evaluation helpers: bits per byte of a stream (consistent with a one-call Forward, skip
// honoured) and the passkey harness (counts tasks, decodes, stays in [0, 1]).
#include "model/evaluation.h"

#include <gtest/gtest.h>

#include <cmath>

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

}  // namespace
}  // namespace titans::testing
