#include "model/evaluation.h"

#include <ATen/ATen.h>

#include <cmath>
#include <random>

#include "model/session_state.h"
#include "model/status_macros.h"
#include "model/trainer.h"

namespace titans {

absl::StatusOr<double> StreamBitsPerByte(const TitansModel& model, const std::string& text,
                                         int64_t piece, int64_t skip) {
  at::NoGradGuard no_grad;
  TITANS_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, model.tokenizer().Encode(text, false));
  if (tokens.size() < 2) return absl::InvalidArgumentError("text too short to score");
  SessionState state = model.NewState();
  double nats = 0;
  int64_t scored = 0;
  const int64_t n = static_cast<int64_t>(tokens.size());
  // Predict token i+1 from tokens [0, i]: feed [begin, end) and score the targets [begin+1, end+1).
  for (int64_t begin = 0; begin < n - 1; begin += piece) {
    const int64_t end = std::min(n - 1, begin + piece);
    std::vector<int64_t> in(tokens.begin() + begin, tokens.begin() + end);
    std::vector<int64_t> target(tokens.begin() + begin + 1, tokens.begin() + end + 1);
    TITANS_ASSIGN_OR_RETURN(
        at::Tensor logits,
        model.Forward(&state, at::tensor(in).unsqueeze(0).to(model.device()), LogitsMode::kAll));
    at::Tensor lp = at::log_softmax(logits.squeeze(0).to(at::kCPU).to(at::kDouble), -1);
    at::Tensor t = at::tensor(target);
    at::Tensor picked = lp.gather(1, t.unsqueeze(1)).squeeze(1);  // [len]
    const int64_t first_scored = std::max<int64_t>(0, skip - (begin + 1));
    if (first_scored < picked.size(0)) {
      nats -= picked.slice(0, first_scored).sum().item<double>();
      scored += picked.size(0) - first_scored;
    }
  }
  if (scored == 0) return absl::InvalidArgumentError("nothing left to score after the skip");
  return nats / static_cast<double>(scored) / std::log(2.0);
}

absl::StatusOr<PasskeyResult> PasskeyAccuracy(const TitansModel& model, const std::string& filler,
                                              int64_t length, int trials, uint64_t seed) {
  at::NoGradGuard no_grad;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> depth(0.0, 0.5);
  PasskeyResult result;
  result.length = length;
  constexpr int64_t kPiece = 4096;
  for (int i = 0; i < trials; ++i) {
    PasskeyTask task = MakePasskeyTask(filler, length, 5, depth(rng), &rng);
    const std::string prompt = task.text.substr(0, static_cast<size_t>(task.answer_begin));
    TITANS_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, model.tokenizer().Encode(prompt, false));
    SessionState state = model.NewState();
    for (size_t at = 0; at < tokens.size(); at += kPiece) {
      const size_t end = std::min(tokens.size(), at + kPiece);
      std::vector<int64_t> ids(tokens.begin() + at, tokens.begin() + end);
      TITANS_RETURN_IF_ERROR(
          model.Forward(&state, at::tensor(ids).unsqueeze(0).to(model.device())).status());
    }
    // Greedy prediction of each digit, then the true digit is fed (teacher forcing).
    int right = 0;
    for (int d = 0; d < 5; ++d) {
      const int64_t predicted = state.last_logits.argmax(-1).item<int64_t>();
      TITANS_ASSIGN_OR_RETURN(std::vector<int32_t> truth,
                              model.tokenizer().Encode(task.answer.substr(d, 1), false));
      if (truth.size() != 1) return absl::FailedPreconditionError("digits must be single tokens");
      right += predicted == truth[0];
      TITANS_RETURN_IF_ERROR(
          model.Forward(&state, at::full({1, 1}, int64_t{truth[0]}, at::kLong).to(model.device()))
              .status());
    }
    ++result.trials;
    result.correct += right == 5;
    result.digits_correct += right;
  }
  return result;
}

}  // namespace titans
