#include "model/generator.h"

#include <random>

#include "model/status_macros.h"
#include "model/tokenizer.h"

namespace titans {

TokenGenerator::TokenGenerator(const TitansModel& model, const SamplingParams& params, Rng rng)
    : model_(&model), params_(params), rng_(rng), text_(model.tokenizer(), params) {}

absl::StatusOr<TokenGenerator> TokenGenerator::Start(const TitansModel& model, SessionState* state,
                                                     const SamplingParams& params) {
  TITANS_RETURN_IF_ERROR(ValidateSamplingParams(params, model.config().vocab_size));
  if (state->batch() != 1) return absl::InvalidArgumentError("generation needs a batch-1 state");
  const Tokenizer& tokenizer = model.tokenizer();
  // An empty session has no logits yet: start it with the beginning-of-sequence token.
  if (state->position == 0 && tokenizer.bos_id() >= 0) {
    at::NoGradGuard no_grad;
    at::Tensor bos = at::full({1, 1}, int64_t{tokenizer.bos_id()}, at::kLong);
    TITANS_RETURN_IF_ERROR(model.Forward(state, bos).status());
  }
  Rng rng(params.seed);
  if (!params.has_seed) {
    absl::StatusOr<Rng> saved = Rng::FromState(state->rng_state);
    rng = saved.ok() ? *saved : Rng(std::random_device{}());
  }
  return TokenGenerator(model, params, rng);
}

int32_t TokenGenerator::Sample(SessionState* state) {
  at::Tensor logits = state->last_logits.select(0, 0).to(at::kCPU).to(at::kFloat).contiguous();
  return SampleFrom(logits.data_ptr<float>(), state);
}

int32_t TokenGenerator::SampleFrom(const float* logits, SessionState* state) {
  const int32_t token =
      SampleToken(logits, model_->config().vocab_size, params_, state->recent_tokens, &rng_);
  state->rng_state = rng_.state();
  return token;
}

absl::StatusOr<TokenGenerator::StepResult> TokenGenerator::Step(SessionState* state) {
  at::NoGradGuard no_grad;
  const int32_t token = Sample(state);
  TITANS_RETURN_IF_ERROR(
      model_->Forward(state, at::full({1, 1}, int64_t{token}, at::kLong)).status());
  return Commit(token);
}

absl::StatusOr<GenerationResult> Generate(const TitansModel& model, SessionState* state,
                                          const SamplingParams& params,
                                          const TokenCallback& on_token) {
  TITANS_ASSIGN_OR_RETURN(TokenGenerator generator, TokenGenerator::Start(model, state, params));
  GenerationResult result;
  while (true) {
    TITANS_ASSIGN_OR_RETURN(TokenGenerator::StepResult step, generator.Step(state));
    result.tokens.push_back(step.token);
    result.text += step.text_delta;
    const bool go_on = on_token ? on_token(step.token, step.text_delta) : true;
    if (step.finished) {
      result.finish_reason = step.finish_reason;
      break;
    }
    if (!go_on) {
      result.finish_reason = FinishReason::kCancelled;
      break;
    }
  }
  return result;
}

}  // namespace titans
