// The shipped default model is not chaotic: its memory's test-time learning must not amplify
// rounding noise. Relative noise of 1e-7 on every weight (fp32 rounding is ~6e-8) moves the
// log-probabilities of a 4 KiB stream by less than 1e-3 nats, and the stream read in one call or
// in random pieces gives the same log-probabilities (split invariance, 2e-3 nats in fp32: the
// pieces reassociate float sums, which a stable memory does not amplify).
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "model/file_util.h"
#include "model/params.h"
#include "model/session_state.h"
#include "model/titans_model.h"
#include "model/trainer.h"

namespace titans {
namespace {

std::string ModelDir() {
  const char* dir = std::getenv("TITANS_STABILITY_MODEL_DIR");
  return dir != nullptr && *dir != 0 ? dir : TITANS_DEFAULT_MODEL_DIR;
}

// ~4 KiB of ordinary English (this repository's model documentation), with a passkey needle and
// a stretch of the passkey noise: prose, repetition and digits, as sessions see them.
std::string StreamText() {
  auto doc = ReadFileToString(std::string(TITANS_SOURCE_DIR) + "/docs/model.md");
  std::string text = doc.ok() ? doc->substr(0, 3000) : std::string();
  text.insert(text.size() / 3, PasskeyNeedle("48215"));
  text += PasskeyNoise(4096 - text.size());
  text.resize(4096);
  return text;
}

// Log-probabilities [n-1] of every next token, the stream fed in the given piece lengths.
at::Tensor LogProbs(const TitansModel& model, const std::vector<int32_t>& tokens,
                    const std::vector<int64_t>& pieces) {
  at::NoGradGuard no_grad;
  SessionState state = model.NewState();
  std::vector<at::Tensor> logits;
  int64_t begin = 0;
  for (int64_t len : pieces) {
    std::vector<int64_t> ids(tokens.begin() + begin, tokens.begin() + begin + len);
    auto out = model.Forward(&state, at::tensor(ids).unsqueeze(0), LogitsMode::kAll);
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return at::Tensor();
    logits.push_back(out->squeeze(0));
    begin += len;
  }
  at::Tensor lp = at::log_softmax(at::cat(logits, 0).to(at::kDouble), -1);
  std::vector<int64_t> next(tokens.begin() + 1, tokens.end());
  return lp.slice(0, 0, lp.size(0) - 1).gather(1, at::tensor(next).unsqueeze(1)).squeeze(1);
}

TEST(DefaultModelStability, WeightNoiseOfOneInTenMillionBarelyMovesTheLogProbs) {
  auto model = TitansModel::Load(ModelDir());
  auto noisy = TitansModel::Load(ModelDir());
  ASSERT_TRUE(model.ok() && noisy.ok()) << model.status();
  auto tokens = (*model)->tokenizer().Encode(StreamText(), false);
  ASSERT_TRUE(tokens.ok());
  const int64_t n = static_cast<int64_t>(tokens->size());
  ASSERT_EQ(n, 4096);
  {
    at::NoGradGuard no_grad;
    at::Generator gen = at::detail::createCPUGenerator(17);
    for (ParamSlot& s : ParamSlots((*noisy)->config(), &(*noisy)->mutable_params())) {
      *s.tensor = *s.tensor * (1 + 1e-7 * at::randn(s.tensor->sizes(), gen));
    }
  }
  at::Tensor a = LogProbs(**model, *tokens, {n});
  at::Tensor b = LogProbs(**noisy, *tokens, {n});
  ASSERT_TRUE(a.defined() && b.defined());
  const double moved = (a - b).abs().max().item<double>();
  EXPECT_LT(moved, 1e-3) << "1e-7 relative weight noise moved a log-prob by " << moved;
  EXPECT_GT(moved, 0) << "the noise must reach the model";
}

TEST(DefaultModelStability, ShippedModelIsSplitInvariant) {
  auto model = TitansModel::Load(ModelDir());
  ASSERT_TRUE(model.ok()) << model.status();
  auto tokens = (*model)->tokenizer().Encode(StreamText(), false);
  ASSERT_TRUE(tokens.ok());
  const int64_t n = static_cast<int64_t>(tokens->size());
  at::Tensor whole = LogProbs(**model, *tokens, {n});
  std::mt19937 rng(3);
  for (int trial = 0; trial < 3; ++trial) {
    std::vector<int64_t> pieces;
    for (int64_t left = n; left > 0;) {
      const int64_t len = std::min<int64_t>(left, 1 + rng() % 700);
      pieces.push_back(len);
      left -= len;
    }
    at::Tensor split = LogProbs(**model, *tokens, pieces);
    ASSERT_TRUE(split.defined());
    EXPECT_LT((split - whole).abs().max().item<double>(), 2e-3) << "trial " << trial;
  }
}

}  // namespace
}  // namespace titans
