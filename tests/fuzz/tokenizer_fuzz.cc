// The byte tokenizer and UTF-8 handling on arbitrary bytes: encode / decode round-trips, and the
// streaming helpers never split or invent characters.
#include <cstdlib>

#include "model/tokenizer.h"
#include "model/utf8.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto tokenizer = std::move(*titans::CreateTokenizer(titans::TokenizerConfig{}, ""));
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto ids = tokenizer->Encode(text, /*parse_special=*/false);
  if (!ids.ok() || *tokenizer->Decode(*ids) != text) std::abort();
  auto special = tokenizer->Encode(text, /*parse_special=*/true);
  if (!special.ok() || *tokenizer->Decode(*special) != text) std::abort();
  if (titans::CompleteUtf8Prefix(text) > text.size()) std::abort();
  const std::string valid = titans::ToValidUtf8(text);
  if (!titans::IsValidUtf8(valid)) std::abort();
  if (titans::IsValidUtf8(text) && valid != text) std::abort();
  return 0;
}
