// Measuring a model: bits per byte on held-out text read as one long stream (the memory carries
// context across the whole text), and passkey retrieval accuracy against haystack length (the
// needle far outside the attention window). Inference only (no gradients).
#ifndef TITANS_MODEL_EVALUATION_H_
#define TITANS_MODEL_EVALUATION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/titans_model.h"

namespace titans {

// The loss of every prediction when `text` (byte-level models: one token per byte) is read from
// a fresh session in pieces of `piece` tokens: entry i is -ln p(token i+1 | tokens 0..i), in nats.
// INVALID_ARGUMENT for a text of fewer than two tokens.
absl::StatusOr<std::vector<double>> StreamNatsPerToken(const TitansModel& model,
                                                       const std::string& text,
                                                       int64_t piece = 4096);

// Bits per byte of predictions [begin, end) of StreamNatsPerToken's result (clamped to its size);
// -1 if the range is empty. A model that uses its memory well gets better (lower) as the stream
// goes on; one whose state drifts gets worse.
double BitsPerByteOver(const std::vector<double>& nats, int64_t begin, int64_t end);

// Mean bits per byte of `text` (byte-level models: one token per byte) read from a fresh session
// in pieces of `piece` tokens; the first `skip` bytes are context only (not scored).
absl::StatusOr<double> StreamBitsPerByte(const TitansModel& model, const std::string& text,
                                         int64_t piece = 4096, int64_t skip = 0);

struct PasskeyResult {
  int64_t length = 0;  // haystack bytes
  int trials = 0;
  int correct = 0;         // all digits right
  int digits_correct = 0;  // digits right in their place, over all trials (5 per trial)
  double accuracy() const { return trials ? static_cast<double>(correct) / trials : 0; }
  // Per-digit accuracy: chance is 0.1 (the first digit: 1/9), so it shows partial recall.
  double digit_accuracy() const {
    return trials ? static_cast<double>(digits_correct) / (5.0 * trials) : 0;
  }
};

// `trials` passkey tasks (MakePasskeyTask, 5 digits, needle depth uniform in [0, 0.5)) of
// `length` bytes with filler from `filler`: the text up to the answer is fed to a fresh session,
// then the answer is decoded greedily (teacher-forced: each digit is predicted after the key's
// true earlier digits, so one wrong digit does not spoil the rest); correct when all five are.
// `filler` is e.g. held-out text or PasskeyNoise() (the paper's S-NIAH-PK haystack).
absl::StatusOr<PasskeyResult> PasskeyAccuracy(const TitansModel& model, const std::string& filler,
                                              int64_t length, int trials, uint64_t seed);

struct RecallResult {
  int64_t filler_bytes = 0;  // bytes between the facts and the questions
  int trials = 0;
  int facts = 0;          // facts asked, over all trials
  int facts_correct = 0;  // facts whose whole value was recalled
  // Where the errors go, from the first digit of each value (the one only the memory can give:
  // the second follows the first within the convolution's reach):
  int first_digits_correct = 0;
  // Wrong first digits that are the first digit of another fact of the same task (a value read
  // under the wrong key), and how many of those a uniformly wrong digit would give: the sum over
  // wrong answers of (other facts' distinct first digits, less the right one) / 9.
  int first_digits_of_other_facts = 0;
  double first_digits_of_other_facts_by_chance = 0;
  // Which other fact a wrong first digit belongs to, each against chance (1/9 per wrong answer
  // where that fact exists and its first digit differs from the right one). The neighbours are
  // in the order the facts were stated; "last answer" is the fact asked just before this one,
  // and "after last answer" the fact stated right after that one (a read that follows the
  // statement's sequence from the previous answer instead of addressing by the asked name).
  struct Neighbour {
    int hits = 0;
    double by_chance = 0;
  };
  Neighbour stated_before, stated_after, last_answer, after_last_answer;
  // First digits right by the order the facts were asked in (index 0: the first question, read
  // before any answer was written back into the memory), and how many were asked at each.
  std::vector<int> first_digits_correct_by_question;
  std::vector<int> asked_by_question;
  double accuracy() const { return facts ? static_cast<double>(facts_correct) / facts : 0; }
};

// Multi-fact recall: `trials` tasks (MakeRecallTask) of `pairs` key-value facts ("kqz=47, ")
// stated at the start, `filler_bytes` of `filler` (random windows), then every key asked again
// in a random order ("Recall: kqz=" -> "47"). A fact counts when both digits of its value are
// the greedy prediction (teacher-forced, as PasskeyAccuracy). Byte-level models only
// (FAILED_PRECONDITION otherwise).
absl::StatusOr<RecallResult> RecallAccuracy(const TitansModel& model, const std::string& filler,
                                            int pairs, int64_t filler_bytes, int trials,
                                            uint64_t seed);

}  // namespace titans

#endif  // TITANS_MODEL_EVALUATION_H_
