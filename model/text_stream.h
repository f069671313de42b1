// TextStream: turns a generation's sampled tokens into the text a client may see, and decides
// when the generation ends (max_tokens, end-of-sequence, a stop string). It holds no tensors and
// does no model work: the caller samples and feeds tokens (model/model_runner.h or
// model/generator.h) and hands each consumed token to Commit().
//
// Text rules: special tokens produce no text; a partial UTF-8 sequence and a possible prefix of
// a stop string are held back until they resolve; the stop string itself and anything after it
// are never emitted. Thread safety: none (one per generation).
#ifndef TITANS_MODEL_TEXT_STREAM_H_
#define TITANS_MODEL_TEXT_STREAM_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "model/sampler.h"
#include "model/tokenizer.h"

namespace titans {

enum class FinishReason { kLength, kStop, kEndOfSequence, kCancelled };
std::string_view FinishReasonName(FinishReason r);

class TextStream {
 public:
  struct Step {
    int32_t token = -1;
    std::string text_delta;  // possibly empty (partial UTF-8 / possible stop prefix held back)
    bool finished = false;
    FinishReason finish_reason = FinishReason::kLength;
  };

  // Reads params.max_tokens, params.stop and params.stop_at_eos. The tokenizer must outlive the
  // stream.
  TextStream(const Tokenizer& tokenizer, const SamplingParams& params);

  // One more token, already consumed into the session.
  Step Commit(int32_t token);
  // The text held back so far (call when ending early, e.g. on cancellation).
  std::string Flush();
  int32_t generated() const { return generated_; }

 private:
  const Tokenizer* tokenizer_;
  int32_t max_tokens_;
  bool stop_at_eos_;
  StopMatcher stops_;
  std::string pending_bytes_;  // bytes of an incomplete UTF-8 sequence
  int32_t generated_ = 0;
};

}  // namespace titans

#endif  // TITANS_MODEL_TEXT_STREAM_H_
