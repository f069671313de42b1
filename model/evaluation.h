// Measuring a model: bits per byte on held-out text read as one long stream (the memory carries
// context across the whole text), and passkey retrieval accuracy against haystack length (the
// needle far outside the attention window). Inference only (no gradients).
#ifndef TITANS_MODEL_EVALUATION_H_
#define TITANS_MODEL_EVALUATION_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "model/titans_model.h"

namespace titans {

// Mean bits per byte of `text` (byte-level models: one token per byte) read from a fresh session
// in pieces of `piece` tokens; the first `skip` bytes are context only (not scored).
absl::StatusOr<double> StreamBitsPerByte(const TitansModel& model, const std::string& text,
                                         int64_t piece = 4096, int64_t skip = 0);

struct PasskeyResult {
  int64_t length = 0;  // haystack bytes
  int trials = 0;
  int correct = 0;  // all digits right
  double accuracy() const { return trials ? static_cast<double>(correct) / trials : 0; }
};

// `trials` passkey tasks (MakePasskeyTask, 5 digits, needle depth uniform in [0, 0.5)) of
// `length` bytes with filler from `filler`: the text up to the answer is fed to a fresh session,
// then the answer is decoded greedily; correct when the decoded digits equal the key.
absl::StatusOr<PasskeyResult> PasskeyAccuracy(const TitansModel& model, const std::string& filler,
                                              int64_t length, int trials, uint64_t seed);

}  // namespace titans

#endif  // TITANS_MODEL_EVALUATION_H_
