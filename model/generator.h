// Autoregressive generation over a session: sample from the state's last logits, feed the token
// back, repeat until max_tokens, end-of-sequence or a stop string.
//
// Every sampled token (including an EOS or the tokens that complete a stop string) is consumed
// into the session, so the session's stream is exactly what the model produced; the returned text
// excludes the stop string and special tokens. The sampler RNG lives in the session state: with
// params.has_seed the run is reseeded and reproducible; without it, it continues the session's
// own RNG stream. Thread safety: as TitansModel::Forward (one caller per state).
#ifndef TITANS_MODEL_GENERATOR_H_
#define TITANS_MODEL_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/sampler.h"
#include "model/session_state.h"
#include "model/text_stream.h"
#include "model/titans_model.h"

namespace titans {

struct GenerationResult {
  std::vector<int32_t> tokens;  // every token consumed into the session by this call
  std::string text;             // the emitted text (what the callback received, concatenated)
  FinishReason finish_reason = FinishReason::kLength;
};

// One generation, advanced a token at a time (the server's scheduler interleaves many of them).
// Start() validates the parameters and, for an empty session, feeds the BOS token; each Step()
// samples one token from the state's last logits, feeds it, and returns the text that became
// safe to emit. Not thread-safe; one per request.
class TokenGenerator {
 public:
  using StepResult = TextStream::Step;

  // INVALID_ARGUMENT for bad parameters (state untouched).
  static absl::StatusOr<TokenGenerator> Start(const TitansModel& model, SessionState* state,
                                              const SamplingParams& params);
  absl::StatusOr<StepResult> Step(SessionState* state);
  // Step() in two halves, for callers that feed the token themselves (the server batches the
  // forward passes of many sessions): Sample() draws the next token from the state's last
  // logits; after the token has been consumed into the state, Commit() does the text and
  // stopping logic.
  int32_t Sample(SessionState* state);
  // Sample() from logits the caller already copied to the host ([vocab] floats, this state's
  // last logits): a batch of sessions shares one device-to-host copy.
  int32_t SampleFrom(const float* logits, SessionState* state);
  StepResult Commit(int32_t token) { return text_.Commit(token); }
  // The text held back so far (call when ending early, e.g. on cancellation).
  std::string Flush() { return text_.Flush(); }
  int32_t generated() const { return text_.generated(); }

 private:
  TokenGenerator(const TitansModel& model, const SamplingParams& params, Rng rng);

  const TitansModel* model_;
  SamplingParams params_;
  Rng rng_;
  TextStream text_;
};

// Called once per generated token with the text that became safe to emit (possibly empty: a
// partial UTF-8 sequence or a possible stop-string prefix is held back). Return false to cancel.
using TokenCallback = std::function<bool(int32_t token, std::string_view text_delta)>;

// Generates into *state. INVALID_ARGUMENT for bad sampling parameters (state untouched). On a
// model error midway the tokens generated so far stay in the session and the error is returned.
absl::StatusOr<GenerationResult> Generate(const TitansModel& model, SessionState* state,
                                          const SamplingParams& params,
                                          const TokenCallback& on_token = nullptr);

}  // namespace titans

#endif  // TITANS_MODEL_GENERATOR_H_
