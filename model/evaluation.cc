#include "model/evaluation.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include "model/session_state.h"
#include "model/status_macros.h"
#include "model/trainer.h"

namespace titans {

absl::StatusOr<std::vector<double>> StreamNatsPerToken(const TitansModel& model,
                                                       const std::string& text, int64_t piece) {
  at::NoGradGuard no_grad;
  TITANS_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, model.tokenizer().Encode(text, false));
  if (tokens.size() < 2) return absl::InvalidArgumentError("text too short to score");
  if (piece < 1) return absl::InvalidArgumentError("piece must be at least 1");
  SessionState state = model.NewState();
  const int64_t n = static_cast<int64_t>(tokens.size());
  std::vector<double> nats;
  nats.reserve(static_cast<size_t>(n - 1));
  // Predict token i+1 from tokens [0, i]: feed [begin, end) and score the targets [begin+1, end+1).
  for (int64_t begin = 0; begin < n - 1; begin += piece) {
    const int64_t end = std::min(n - 1, begin + piece);
    std::vector<int64_t> in(tokens.begin() + begin, tokens.begin() + end);
    std::vector<int64_t> target(tokens.begin() + begin + 1, tokens.begin() + end + 1);
    TITANS_ASSIGN_OR_RETURN(
        at::Tensor logits,
        model.Forward(&state, at::tensor(in).unsqueeze(0).to(model.device()), LogitsMode::kAll));
    at::Tensor lp = at::log_softmax(logits.squeeze(0).to(at::kCPU).to(at::kDouble), -1);
    at::Tensor picked = lp.gather(1, at::tensor(target).unsqueeze(1)).squeeze(1).contiguous();
    const double* p = picked.data_ptr<double>();
    for (int64_t i = 0; i < picked.size(0); ++i) nats.push_back(-p[i]);
  }
  return nats;
}

double BitsPerByteOver(const std::vector<double>& nats, int64_t begin, int64_t end) {
  begin = std::max<int64_t>(0, begin);
  end = std::min<int64_t>(static_cast<int64_t>(nats.size()), end);
  if (begin >= end) return -1;
  double sum = 0;
  for (int64_t i = begin; i < end; ++i) sum += nats[static_cast<size_t>(i)];
  return sum / static_cast<double>(end - begin) / std::log(2.0);
}

absl::StatusOr<double> StreamBitsPerByte(const TitansModel& model, const std::string& text,
                                         int64_t piece, int64_t skip) {
  TITANS_ASSIGN_OR_RETURN(std::vector<double> nats, StreamNatsPerToken(model, text, piece));
  // Prediction i is of token i+1: the first `skip` tokens are context only.
  const double bpb =
      BitsPerByteOver(nats, std::max<int64_t>(0, skip - 1), static_cast<int64_t>(nats.size()));
  if (bpb < 0) return absl::InvalidArgumentError("nothing left to score after the skip");
  return bpb;
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

absl::StatusOr<RecallResult> RecallAccuracy(const TitansModel& model, const std::string& filler,
                                            int pairs, int64_t filler_bytes, int trials,
                                            uint64_t seed) {
  at::NoGradGuard no_grad;
  if (model.config().tokenizer.type != "byte") {
    return absl::FailedPreconditionError("recall tasks need a byte-level model");
  }
  if (pairs < 1 || filler_bytes < 0 || trials < 0) {
    return absl::InvalidArgumentError("pairs must be >= 1, filler_bytes and trials >= 0");
  }
  std::mt19937_64 rng(seed);
  RecallResult result;
  result.filler_bytes = filler_bytes;
  // MakeRecallTask fits (length - filler - 16) / 16 pairs: this length gives exactly `pairs`.
  const int64_t length = filler_bytes + 16 + 16 * static_cast<int64_t>(pairs);
  for (int i = 0; i < trials; ++i) {
    RecallTask task = MakeRecallTask(filler, length, filler_bytes, &rng);
    TITANS_ASSIGN_OR_RETURN(std::vector<int32_t> tokens,
                            model.tokenizer().Encode(task.text, false));
    SessionState state = model.NewState();
    // Feed up to each answer byte, compare the greedy prediction with it, then feed it.
    int64_t fed = 0;
    std::vector<bool> hit;
    std::vector<int64_t> predicted;
    for (int64_t answer : task.answers) {
      for (int64_t at = fed; at < answer; at += 4096) {
        const int64_t end = std::min(answer, at + 4096);
        std::vector<int64_t> ids(tokens.begin() + at, tokens.begin() + end);
        TITANS_RETURN_IF_ERROR(
            model.Forward(&state, at::tensor(ids).unsqueeze(0).to(model.device())).status());
      }
      fed = answer;
      predicted.push_back(state.last_logits.argmax(-1).item<int64_t>());
      hit.push_back(predicted.back() == tokens[answer]);
    }
    // Where each asked fact was stated: the statement is pairs of 8 bytes ("kqz=47, ") from 0.
    std::vector<int64_t> stated_index;
    for (size_t f = 0; f < task.answers.size(); f += 2) {
      const std::string name = task.text.substr(static_cast<size_t>(task.answers[f] - 4), 4);
      stated_index.push_back(static_cast<int64_t>(task.text.find(name)) / 8);
    }
    const auto stated_first_digit = [&](int64_t index) -> int64_t {
      return index < 0 || index >= pairs ? -1 : tokens[static_cast<size_t>(8 * index + 4)];
    };
    // Answers come in pairs of digits, one pair per fact.
    for (size_t f = 0; f + 1 < hit.size(); f += 2) {
      ++result.facts;
      result.facts_correct += hit[f] && hit[f + 1];
      result.first_digits_correct += hit[f];
      const size_t question = f / 2;
      if (result.asked_by_question.size() <= question) {
        result.asked_by_question.resize(question + 1, 0);
        result.first_digits_correct_by_question.resize(question + 1, 0);
      }
      ++result.asked_by_question[question];
      result.first_digits_correct_by_question[question] += hit[f];
      if (hit[f]) continue;
      const int64_t right = tokens[task.answers[f]];
      std::set<int64_t> others;  // other facts' first digits, less the right one
      for (size_t g = 0; g + 1 < task.answers.size(); g += 2) {
        if (g != f && tokens[task.answers[g]] != right) others.insert(tokens[task.answers[g]]);
      }
      result.first_digits_of_other_facts += others.count(predicted[f]) > 0;
      result.first_digits_of_other_facts_by_chance += static_cast<double>(others.size()) / 9;
      const auto tally = [&](int64_t candidate, RecallResult::Neighbour* n) {
        if (candidate < 0 || candidate == right) return;
        n->hits += predicted[f] == candidate;
        n->by_chance += 1.0 / 9;
      };
      const int64_t asked = stated_index[f / 2];
      tally(stated_first_digit(asked - 1), &result.stated_before);
      tally(stated_first_digit(asked + 1), &result.stated_after);
      if (f >= 2) {
        const int64_t previous = stated_index[f / 2 - 1];
        tally(stated_first_digit(previous), &result.last_answer);
        tally(stated_first_digit(previous + 1), &result.after_last_answer);
      }
    }
    ++result.trials;
  }
  return result;
}

}  // namespace titans
