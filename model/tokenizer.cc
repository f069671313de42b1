#include "model/tokenizer.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"

// Debian's sentencepiece_processor.h declares `namespace absl { using std::string_view; }`,
// which collides with Abseil's own absl::string_view class (this Abseil build does not alias
// std::string_view). Renaming the namespace while the header is parsed keeps both usable; the
// header's signatures still name std::string_view, so the mangled symbols match the library.
#define absl titans_sentencepiece_absl
#include <sentencepiece_processor.h>
#undef absl

namespace titans {
namespace {

// Finds literal special-token strings in text; the longest match wins at a position.
class SpecialMatcher {
 public:
  void Add(std::string text, int32_t id) {
    if (text.empty()) return;
    first_byte_[static_cast<unsigned char>(text[0])] = true;
    specials_.emplace_back(std::move(text), id);
    std::stable_sort(specials_.begin(), specials_.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }

  // If a special string starts at text[pos], returns its id and stores its length in *len.
  // Returns -1 otherwise.
  int32_t Match(std::string_view text, size_t pos, size_t* len) const {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) return -1;
    for (const auto& [str, id] : specials_) {
      if (text.compare(pos, str.size(), str) == 0) {
        *len = str.size();
        return id;
      }
    }
    return -1;
  }

  // Splits `text` at special strings: calls plain(segment) for each non-empty ordinary segment
  // and special(id) for each special string, in order. Stops at the first non-OK status.
  template <typename PlainFn, typename SpecialFn>
  absl::Status Split(std::string_view text, PlainFn plain, SpecialFn special) const {
    size_t start = 0;
    for (size_t pos = 0; pos < text.size();) {
      size_t len = 0;
      const int32_t id = Match(text, pos, &len);
      if (id < 0) {
        ++pos;
        continue;
      }
      if (pos > start) {
        absl::Status status = plain(text.substr(start, pos - start));
        if (!status.ok()) return status;
      }
      special(id);
      pos += len;
      start = pos;
    }
    if (start < text.size()) return plain(text.substr(start));
    return absl::OkStatus();
  }

 private:
  std::vector<std::pair<std::string, int32_t>> specials_;
  std::array<bool, 256> first_byte_{};
};

absl::Status IdOutOfRange(int32_t id, int32_t vocab_size) {
  return absl::InvalidArgumentError(
      absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
}

// ---------------------------------------------------------------------------------------------
// Byte-level tokenizer.

constexpr std::array<const char*, 4> kByteSpecials = {"<|bos|>", "<|eos|>", "<|pad|>", "<|sep|>"};

class ByteTokenizer final : public Tokenizer {
 public:
  ByteTokenizer() {
    for (int32_t i = 0; i < static_cast<int32_t>(kByteSpecials.size()); ++i) {
      matcher_.Add(kByteSpecials[i], kByteBosId + i);
    }
  }

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool parse_special) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size());
    auto plain = [&ids](std::string_view segment) {
      for (char c : segment) ids.push_back(static_cast<unsigned char>(c));
      return absl::OkStatus();
    };
    if (!parse_special) {
      plain(text).IgnoreError();
      return ids;
    }
    absl::Status status = matcher_.Split(text, plain, [&ids](int32_t id) { ids.push_back(id); });
    if (!status.ok()) return status;
    return ids;
  }

  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (int32_t id : ids) {
      if (id < 0 || id >= kByteVocabSize) return IdOutOfRange(id, kByteVocabSize);
      out += TokenBytes(id);
    }
    return out;
  }

  std::string TokenBytes(int32_t id) const override {
    if (id >= 0 && id < 256) return std::string(1, static_cast<char>(id));
    if (IsSpecial(id)) return kByteSpecials[id - kByteBosId];
    return "";
  }

  int32_t vocab_size() const override { return kByteVocabSize; }
  int32_t bos_id() const override { return kByteBosId; }
  int32_t eos_id() const override { return kByteEosId; }
  int32_t pad_id() const override { return kBytePadId; }
  bool IsSpecial(int32_t id) const override { return id >= 256 && id < kByteVocabSize; }
  std::string type() const override { return "byte"; }

 private:
  SpecialMatcher matcher_;
};

// ---------------------------------------------------------------------------------------------
// Minimal protobuf wire-format reader, used only to find USER_DEFINED pieces (the Debian
// SentencePiece package ships no ModelProto header and the processor has no IsUserDefined()).

bool ReadVarint(std::string_view data, size_t* pos, uint64_t* value) {
  *value = 0;
  for (int shift = 0; shift < 64 && *pos < data.size(); shift += 7) {
    const auto byte = static_cast<unsigned char>(data[(*pos)++]);
    *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

// Reads one field key at *pos; returns false on malformed input. Length-delimited payloads are
// returned in *payload, varints in *varint; other wire types are skipped.
bool ReadField(std::string_view data, size_t* pos, uint64_t* field, uint64_t* varint,
               std::string_view* payload) {
  uint64_t key = 0;
  if (!ReadVarint(data, pos, &key)) return false;
  *field = key >> 3;
  switch (key & 7) {
    case 0:
      return ReadVarint(data, pos, varint);
    case 1:
    case 5: {
      const size_t size = (key & 7) == 1 ? 8 : 4;
      if (data.size() - *pos < size) return false;
      *pos += size;
      return true;
    }
    case 2: {
      uint64_t len = 0;
      if (!ReadVarint(data, pos, &len) || len > data.size() - *pos) return false;
      *payload = data.substr(*pos, len);
      *pos += len;
      return true;
    }
    default:
      return false;
  }
}

// Returns the SentencePiece.Type of every piece in a serialized ModelProto (field 1: pieces;
// within a piece, field 3: type, default NORMAL = 1), or an empty vector if parsing fails.
std::vector<int> ParsePieceTypes(std::string_view proto) {
  std::vector<int> types;
  size_t pos = 0;
  while (pos < proto.size()) {
    uint64_t field = 0, varint = 0;
    std::string_view piece;
    if (!ReadField(proto, &pos, &field, &varint, &piece)) return {};
    if (field != 1 || piece.data() == nullptr) continue;
    int type = 1;
    for (size_t p = 0; p < piece.size();) {
      uint64_t sub_field = 0, sub_varint = 0;
      std::string_view unused;
      if (!ReadField(piece, &p, &sub_field, &sub_varint, &unused)) return {};
      if (sub_field == 3) type = static_cast<int>(sub_varint);
    }
    types.push_back(type);
  }
  return types;
}

constexpr int kUserDefinedPieceType = 4;

// ---------------------------------------------------------------------------------------------
// SentencePiece tokenizer.

class SentencePieceTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path) {
    auto tok = std::unique_ptr<SentencePieceTokenizer>(new SentencePieceTokenizer());
    const auto status = tok->sp_.Load(path);
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("failed to load sentencepiece model ", path, ": ", status.ToString()));
    }
    const int32_t n = tok->sp_.GetPieceSize();
    if (n <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sentencepiece model ", path, " has an empty vocabulary"));
    }
    const std::vector<int> types = ParsePieceTypes(tok->sp_.serialized_model_proto());
    tok->special_.assign(n, false);
    tok->token_bytes_.resize(n);
    for (int32_t id = 0; id < n; ++id) {
      const std::string& piece = tok->sp_.IdToPiece(id);
      const bool user_defined =
          static_cast<int32_t>(types.size()) == n && types[id] == kUserDefinedPieceType;
      if (tok->sp_.IsControl(id)) {
        tok->special_[id] = true;
        tok->token_bytes_[id] = piece;
        tok->control_.Add(piece, id);
      } else if (user_defined) {
        tok->special_[id] = true;
        tok->token_bytes_[id] = piece;
      } else if (tok->sp_.IsByte(id) && piece.size() == 6) {  // "<0xAB>"
        tok->token_bytes_[id] =
            std::string(1, static_cast<char>(HexDigit(piece[3]) * 16 + HexDigit(piece[4])));
      } else if (tok->sp_.IsUnknown(id)) {
        tok->token_bytes_[id] = tok->sp_.DecodeIds({id});
      } else {
        tok->token_bytes_[id] = ReplaceSpaceSymbol(piece);
      }
    }
    return std::unique_ptr<Tokenizer>(std::move(tok));
  }

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool parse_special) const override {
    std::vector<int32_t> ids;
    auto plain = [this, &ids](std::string_view segment) -> absl::Status {
      std::vector<int> piece_ids;
      const auto status = sp_.Encode(segment, &piece_ids);
      if (!status.ok()) {
        return absl::InternalError(absl::StrCat("sentencepiece encode: ", status.ToString()));
      }
      ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
      return absl::OkStatus();
    };
    absl::Status status =
        parse_special ? control_.Split(text, plain, [&ids](int32_t id) { ids.push_back(id); })
                      : plain(text);
    if (!status.ok()) return status;
    return ids;
  }

  // Runs between control symbols are decoded by SentencePiece (so each run drops its leading
  // dummy-prefix space, exactly as segments are encoded); control symbols are rendered verbatim.
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const override {
    const int32_t n = vocab_size();
    for (int32_t id : ids) {
      if (id < 0 || id >= n) return IdOutOfRange(id, n);
    }
    std::string out;
    std::vector<int> run;
    auto flush = [this, &out, &run]() -> absl::Status {
      if (run.empty()) return absl::OkStatus();
      std::string text;
      const auto status = sp_.Decode(run, &text);
      if (!status.ok()) {
        return absl::InternalError(absl::StrCat("sentencepiece decode: ", status.ToString()));
      }
      out += text;
      run.clear();
      return absl::OkStatus();
    };
    for (int32_t id : ids) {
      if (!sp_.IsControl(id)) {
        run.push_back(id);
        continue;
      }
      absl::Status status = flush();
      if (!status.ok()) return status;
      out += token_bytes_[id];
    }
    absl::Status status = flush();
    if (!status.ok()) return status;
    return out;
  }

  std::string TokenBytes(int32_t id) const override {
    if (id < 0 || id >= vocab_size()) return "";
    return token_bytes_[id];
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(token_bytes_.size()); }
  int32_t bos_id() const override { return sp_.bos_id(); }
  int32_t eos_id() const override { return sp_.eos_id(); }
  int32_t pad_id() const override { return sp_.pad_id(); }
  bool IsSpecial(int32_t id) const override { return id >= 0 && id < vocab_size() && special_[id]; }
  std::string type() const override { return "sentencepiece"; }

 private:
  SentencePieceTokenizer() = default;

  static int HexDigit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return 0;
  }

  // Replaces U+2581 ("▁", SentencePiece's whitespace marker) with ' '.
  static std::string ReplaceSpaceSymbol(const std::string& piece) {
    static constexpr std::string_view kSpaceSymbol = "\xe2\x96\x81";
    std::string out;
    for (size_t pos = 0; pos < piece.size();) {
      if (piece.compare(pos, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
        out += ' ';
        pos += kSpaceSymbol.size();
      } else {
        out += piece[pos++];
      }
    }
    return out;
  }

  sentencepiece::SentencePieceProcessor sp_;
  std::vector<std::string> token_bytes_;
  std::vector<bool> special_;
  SpecialMatcher control_;  // Control symbols (<s>, </s>, ...), for parse_special.
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> CreateTokenizer(const TokenizerConfig& config,
                                                           const std::string& model_dir) {
  if (config.type == "byte") return std::unique_ptr<Tokenizer>(new ByteTokenizer());
  if (config.type != "sentencepiece") {
    return absl::InvalidArgumentError(absl::StrCat("unknown tokenizer type \"", config.type,
                                                   "\" (expected \"byte\" or \"sentencepiece\")"));
  }
  if (config.model_file.empty()) {
    return absl::InvalidArgumentError("sentencepiece tokenizer requires a model_file");
  }
  const std::filesystem::path path =
      std::filesystem::path(model_dir.empty() ? "." : model_dir) / config.model_file;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat("sentencepiece model file not found: ", path.string()));
  }
  return SentencePieceTokenizer::Load(path.string());
}

size_t CompleteUtf8Prefix(std::string_view bytes) {
  const size_t n = bytes.size();
  auto at = [&bytes](size_t i) { return static_cast<unsigned char>(bytes[i]); };
  auto is_continuation = [](unsigned char b) { return (b & 0xC0) == 0x80; };
  // Find the last non-continuation byte among the final 4 bytes.
  size_t lead = n;
  for (size_t i = n; i > 0 && n - i < 4; --i) {
    if (!is_continuation(at(i - 1))) {
      lead = i - 1;
      break;
    }
  }
  if (lead == n) return n;  // Empty, or only stray continuation bytes: complete.
  const unsigned char b = at(lead);
  size_t expected = 1;
  unsigned char lo = 0x80, hi = 0xBF;  // Allowed range of the second byte.
  if (b >= 0xC2 && b <= 0xDF) {
    expected = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    expected = 3;
    if (b == 0xE0) lo = 0xA0;  // No overlong forms.
    if (b == 0xED) hi = 0x9F;  // No surrogates.
  } else if (b >= 0xF0 && b <= 0xF4) {
    expected = 4;
    if (b == 0xF0) lo = 0x90;  // No overlong forms.
    if (b == 0xF4) hi = 0x8F;  // Nothing above U+10FFFF.
  }
  const size_t have = n - lead;
  if (have >= expected) return n;
  if (have >= 2 && (at(lead + 1) < lo || at(lead + 1) > hi)) return n;  // Invalid: emit.
  return lead;  // A valid but incomplete sequence: hold it back.
}

}  // namespace titans
