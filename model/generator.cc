#include "model/generator.h"

#include <random>

#include "model/status_macros.h"
#include "model/tokenizer.h"

namespace titans {

std::string_view FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kEndOfSequence:
      return "eos";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

absl::StatusOr<GenerationResult> Generate(const TitansModel& model, SessionState* state,
                                          const SamplingParams& params,
                                          const TokenCallback& on_token) {
  TITANS_RETURN_IF_ERROR(ValidateSamplingParams(params, model.config().vocab_size));
  if (state->batch() != 1) return absl::InvalidArgumentError("generation needs a batch-1 state");
  const Tokenizer& tokenizer = model.tokenizer();
  at::NoGradGuard no_grad;

  // An empty session has no logits yet: start it with the beginning-of-sequence token.
  if (state->position == 0 && tokenizer.bos_id() >= 0) {
    at::Tensor bos = at::full({1, 1}, int64_t{tokenizer.bos_id()}, at::kLong);
    TITANS_RETURN_IF_ERROR(model.Forward(state, bos).status());
  }
  Rng rng(params.seed);
  if (!params.has_seed) {
    absl::StatusOr<Rng> saved = Rng::FromState(state->rng_state);
    rng = saved.ok() ? *saved : Rng(std::random_device{}());
  }

  GenerationResult result;
  StopMatcher stops(params.stop);
  std::string pending_bytes;  // bytes of an incomplete UTF-8 sequence
  auto emit = [&](int32_t token, const std::string& delta) {
    result.text += delta;
    return on_token ? on_token(token, delta) : true;
  };
  while (true) {
    at::Tensor logits = state->last_logits.select(0, 0).to(at::kCPU).contiguous();
    const int32_t token = SampleToken(logits.data_ptr<float>(), model.config().vocab_size, params,
                                      state->recent_tokens, &rng);
    at::Tensor input = at::full({1, 1}, int64_t{token}, at::kLong);
    absl::Status st = model.Forward(state, input).status();
    state->rng_state = rng.state();
    if (!st.ok()) return st;
    result.tokens.push_back(token);

    if (params.stop_at_eos && token == tokenizer.eos_id()) {
      result.finish_reason = FinishReason::kEndOfSequence;
      emit(token, stops.Flush() + pending_bytes);
      break;
    }
    std::string delta;
    if (!tokenizer.IsSpecial(token)) {
      pending_bytes += tokenizer.TokenBytes(token);
      const size_t complete = CompleteUtf8Prefix(pending_bytes);
      bool stopped = false;
      delta = stops.Feed(std::string_view(pending_bytes).substr(0, complete), &stopped);
      pending_bytes.erase(0, complete);
      if (stopped) {
        result.finish_reason = FinishReason::kStop;
        emit(token, delta);
        break;
      }
    }
    const bool last = static_cast<int32_t>(result.tokens.size()) >= params.max_tokens;
    if (last) delta += stops.Flush() + pending_bytes;
    if (!emit(token, delta)) {
      result.finish_reason = FinishReason::kCancelled;
      break;
    }
    if (last) {
      result.finish_reason = FinishReason::kLength;
      break;
    }
  }
  return result;
}

}  // namespace titans
