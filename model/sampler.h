// Token sampling on CPU logits, a serialisable PRNG, and stop-string matching for streaming.
//
// Everything here is plain C++ over float arrays; results are deterministic for a given build
// and Rng state. Errors are absl::Status values; nothing throws.

#ifndef TITANS_MODEL_SAMPLER_H_
#define TITANS_MODEL_SAMPLER_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace titans {

struct SamplingParams {
  float temperature = 1.0f;         // 0 => greedy.
  int32_t top_k = 0;                // 0 => off.
  float top_p = 1.0f;               // 1 => off.
  float min_p = 0.0f;               // 0 => off.
  float repetition_penalty = 1.0f;  // 1 => off.
  uint64_t seed = 0;
  bool has_seed = false;
  int32_t max_tokens = 256;
  std::vector<std::string> stop;
  bool stop_at_eos = true;
};

// OK, or INVALID_ARGUMENT naming the first bad field and its allowed range: temperature in
// [0, 100], top_k in [0, vocab_size], top_p in (0, 1], min_p in [0, 1), repetition_penalty in
// (0, 10], max_tokens in [1, 1 << 20], at most 16 stop strings of 1..256 bytes each. NaN is
// rejected everywhere. vocab_size must be positive.
absl::Status ValidateSamplingParams(const SamplingParams& p, int32_t vocab_size);

// xoshiro256** seeded through splitmix64. The whole state is four words, so a session can save
// and restore its generator bit-exactly. Not thread-safe; use one Rng per session.
class Rng {
 public:
  using State = std::array<uint64_t, 4>;

  explicit Rng(uint64_t seed);

  // Next 64 random bits.
  uint64_t Next();
  // Uniform in [0, 1) with 53 random bits (consumes one Next()).
  double NextDouble();

  State state() const { return state_; }
  // Restores a generator saved with state(). INVALID_ARGUMENT for the all-zero state, which
  // xoshiro cannot leave and state() never returns.
  static absl::StatusOr<Rng> FromState(const State& state);

 private:
  Rng() = default;
  State state_{};
};

// Picks the next token from `logits[0 .. vocab_size)`. `params` should have passed
// ValidateSamplingParams. NaN and -inf logits are never chosen; +inf logits dominate.
//
// 1. Repetition penalty (CTRL-style, applied once per distinct id in `recent_tokens`; ids out
//    of range are ignored): positive logits are divided by the penalty, negative ones
//    multiplied. Applied in greedy mode too.
// 2. temperature == 0: greedy argmax (ties -> lowest id); `rng` is not used and may be null.
// 3. Otherwise: temperature scaling, top-k, top-p (smallest set, by descending probability and
//    then ascending id, whose mass >= top_p), min_p (keep p >= min_p * p_max), then exactly one
//    rng->NextDouble() draw, consumed whatever the filters leave (even a single candidate).
//    Arithmetic is in double; a token whose probability is 0 is never returned.
// If no logit is finite or +inf (all -inf / NaN), or vocab_size <= 0, returns 0 (and does not
// advance `rng`).
int32_t SampleToken(const float* logits, int32_t vocab_size, const SamplingParams& params,
                    const std::vector<int32_t>& recent_tokens, Rng* rng);

// Withholds streamed text that might be the start of a stop string. Stops at the stop string
// that completes first in the stream (ties: the longer one, i.e. the earliest start), so the
// result does not depend on how the text is split into deltas. Not thread-safe.
class StopMatcher {
 public:
  // Empty stop strings are ignored.
  explicit StopMatcher(std::vector<std::string> stop);

  // Appends `text_delta` and returns the text that is safe to emit now. When a stop string
  // completes, sets *stopped = true and returns only the text before it; the stop string and
  // everything after it are dropped, and later calls return "". Otherwise sets *stopped to
  // false (unless already stopped). `stopped` may be null.
  std::string Feed(std::string_view text_delta, bool* stopped);

  // Returns (and clears) the held-back text at the end of generation; "" after a stop.
  std::string Flush();

  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stop_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace titans

#endif  // TITANS_MODEL_SAMPLER_H_
