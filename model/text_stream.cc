#include "model/text_stream.h"

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

TextStream::TextStream(const Tokenizer& tokenizer, const SamplingParams& params)
    : tokenizer_(&tokenizer),
      max_tokens_(params.max_tokens),
      stop_at_eos_(params.stop_at_eos),
      stops_(params.stop) {}

TextStream::Step TextStream::Commit(int32_t token) {
  Step out;
  out.token = token;
  ++generated_;
  if (stop_at_eos_ && token == tokenizer_->eos_id()) {
    out.finished = true;
    out.finish_reason = FinishReason::kEndOfSequence;
    out.text_delta = Flush();
    return out;
  }
  if (!tokenizer_->IsSpecial(token)) {
    pending_bytes_ += tokenizer_->TokenBytes(token);
    const size_t complete = CompleteUtf8Prefix(pending_bytes_);
    bool stopped = false;
    out.text_delta = stops_.Feed(std::string_view(pending_bytes_).substr(0, complete), &stopped);
    pending_bytes_.erase(0, complete);
    if (stopped) {
      out.finished = true;
      out.finish_reason = FinishReason::kStop;
      return out;
    }
  }
  if (generated_ >= max_tokens_) {
    out.text_delta += Flush();
    out.finished = true;
    out.finish_reason = FinishReason::kLength;
  }
  return out;
}

std::string TextStream::Flush() {
  std::string rest = stops_.Flush() + pending_bytes_;
  pending_bytes_.clear();
  return rest;
}

}  // namespace titans
