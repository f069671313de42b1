// Tokenizers for Titans models: a byte-level tokenizer and a SentencePiece wrapper.
//
// Error handling: every fallible call returns absl::Status / absl::StatusOr; nothing throws.
// Thread safety: a constructed Tokenizer is immutable; all const methods may be called
// concurrently from any number of threads.

#ifndef TITANS_MODEL_TOKENIZER_H_
#define TITANS_MODEL_TOKENIZER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace titans {

struct TokenizerConfig {
  // "byte" or "sentencepiece".
  std::string type = "byte";
  // SentencePiece model file (type "sentencepiece" only). A relative path is resolved against
  // the model directory; an absolute path is used as is.
  std::string model_file;
};

// Byte-level tokenizer layout: ids 0..255 are the raw bytes, followed by the special tokens.
inline constexpr int32_t kByteBosId = 256;  // "<|bos|>"
inline constexpr int32_t kByteEosId = 257;  // "<|eos|>"
inline constexpr int32_t kBytePadId = 258;  // "<|pad|>"
inline constexpr int32_t kByteSepId = 259;  // "<|sep|>"
inline constexpr int32_t kByteVocabSize = 260;

// Abstract tokenizer. Implementations are immutable after construction and thread-safe for
// concurrent const use.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Converts `text` (arbitrary bytes; SentencePiece additionally applies its normalisation) to
  // token ids. With `parse_special`, literal occurrences of special-token strings (e.g.
  // "<|eos|>" or "</s>") become their ids; otherwise they are ordinary text. Never adds BOS/EOS
  // implicitly. Errors: INTERNAL if the underlying library fails.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                                      bool parse_special) const = 0;

  // Converts ids back to text. Special tokens are rendered in their string form (the same bytes
  // as TokenBytes), so Decode(Encode(s, true)) reproduces s for the byte tokenizer; callers that
  // want plain text drop ids with IsSpecial() first. Errors: INVALID_ARGUMENT if any id is
  // outside [0, vocab_size()).
  virtual absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const = 0;

  // Raw bytes that token `id` contributes to generated output (special tokens: their string
  // form). The result may be an incomplete UTF-8 sequence; streaming callers concatenate the
  // bytes and emit only CompleteUtf8Prefix() of them. Returns "" for an out-of-range id.
  virtual std::string TokenBytes(int32_t id) const = 0;

  virtual int32_t vocab_size() const = 0;
  // Reserved ids; -1 when the tokenizer has no such token (possible for SentencePiece).
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual int32_t pad_id() const = 0;

  // True for special / control tokens (byte: ids >= 256; SentencePiece: control and
  // user-defined symbols). False for out-of-range ids.
  virtual bool IsSpecial(int32_t id) const = 0;

  // "byte" or "sentencepiece".
  virtual std::string type() const = 0;
};

// Builds the tokenizer described by `config`. The caller owns the result.
// Errors: INVALID_ARGUMENT for an unknown type or an empty SentencePiece model_file;
// NOT_FOUND if the SentencePiece model file does not exist; INVALID_ARGUMENT if it fails to load.
absl::StatusOr<std::unique_ptr<Tokenizer>> CreateTokenizer(const TokenizerConfig& config,
                                                           const std::string& model_dir);

// Length of the longest prefix of `bytes` that does not end in the middle of a UTF-8 sequence:
// at most the last 3 bytes are held back, and only when they form a valid, incomplete UTF-8
// prefix. Invalid bytes count as complete single bytes so a stream never stalls.
size_t CompleteUtf8Prefix(std::string_view bytes);

}  // namespace titans

#endif  // TITANS_MODEL_TOKENIZER_H_
