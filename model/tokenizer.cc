#include "model/tokenizer.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "model/sentencepiece_loader.h"

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
// SentencePiece tokenizer.
//
// SentencePiece is never linked into this library: its Debian build embeds a protobuf copy that
// clashes with the system libprotobuf loaded by LibTorch / gRPC. The tokenizer goes through the
// libtitans_sentencepiece.so plug-in instead (model/sentencepiece_loader.h).

class SentencePieceTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path) {
    absl::StatusOr<const SentencePieceShim*> shim = LoadSentencePieceShim();
    if (!shim.ok()) return shim.status();
    auto tok = std::unique_ptr<SentencePieceTokenizer>(new SentencePieceTokenizer(*shim));
    char* error = nullptr;
    tok->sp_ = tok->shim_->create(path.c_str(), &error);
    if (tok->sp_ == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("failed to load sentencepiece model ", path, ": ", tok->TakeError(error)));
    }
    const int32_t n = tok->shim_->vocab_size(tok->sp_);
    if (n <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sentencepiece model ", path, " has an empty vocabulary"));
    }
    tok->bos_id_ = tok->shim_->bos_id(tok->sp_);
    tok->eos_id_ = tok->shim_->eos_id(tok->sp_);
    tok->pad_id_ = tok->shim_->pad_id(tok->sp_);
    tok->control_ids_.assign(n, false);
    tok->special_.assign(n, false);
    tok->token_bytes_.resize(n);
    for (int32_t id = 0; id < n; ++id) {
      const std::string piece = tok->Piece(id);
      const int32_t flags = tok->shim_->piece_flags(tok->sp_, id);
      if (flags & TITANS_SP_PIECE_CONTROL) {
        tok->control_ids_[id] = true;
        tok->special_[id] = true;
        tok->token_bytes_[id] = piece;
        tok->control_.Add(piece, id);
      } else if (flags & TITANS_SP_PIECE_USER_DEFINED) {
        tok->special_[id] = true;
        tok->token_bytes_[id] = piece;
      } else if ((flags & TITANS_SP_PIECE_BYTE) && piece.size() == 6) {  // "<0xAB>"
        tok->token_bytes_[id] =
            std::string(1, static_cast<char>(HexDigit(piece[3]) * 16 + HexDigit(piece[4])));
      } else if (flags & TITANS_SP_PIECE_UNKNOWN) {
        absl::StatusOr<std::string> text = tok->DecodeRun({id});
        tok->token_bytes_[id] = text.ok() ? *std::move(text) : std::string();
      } else {
        tok->token_bytes_[id] = ReplaceSpaceSymbol(piece);
      }
    }
    return std::unique_ptr<Tokenizer>(std::move(tok));
  }

  ~SentencePieceTokenizer() override {
    if (sp_ != nullptr) shim_->destroy(sp_);
  }

  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool parse_special) const override {
    std::vector<int32_t> ids;
    auto plain = [this, &ids](std::string_view segment) -> absl::Status {
      int32_t* piece_ids = nullptr;
      size_t num_ids = 0;
      char* error = nullptr;
      if (shim_->encode(sp_, segment.data(), segment.size(), &piece_ids, &num_ids, &error) != 0) {
        return absl::InternalError(absl::StrCat("sentencepiece encode: ", TakeError(error)));
      }
      if (piece_ids != nullptr) ids.insert(ids.end(), piece_ids, piece_ids + num_ids);
      shim_->free(piece_ids);
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
    std::vector<int32_t> run;
    auto flush = [this, &out, &run]() -> absl::Status {
      if (run.empty()) return absl::OkStatus();
      absl::StatusOr<std::string> text = DecodeRun(run);
      if (!text.ok()) return text.status();
      out += *text;
      run.clear();
      return absl::OkStatus();
    };
    for (int32_t id : ids) {
      if (!control_ids_[id]) {
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
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  int32_t pad_id() const override { return pad_id_; }
  bool IsSpecial(int32_t id) const override { return id >= 0 && id < vocab_size() && special_[id]; }
  std::string type() const override { return "sentencepiece"; }

 private:
  explicit SentencePieceTokenizer(const SentencePieceShim* shim) : shim_(shim) {}

  // Takes ownership of a plug-in error message (possibly null) and returns it.
  std::string TakeError(char* error) const {
    std::string message = error != nullptr ? error : "unknown error";
    shim_->free(error);
    return message;
  }

  // The piece string of `id`; "" if the plug-in fails.
  std::string Piece(int32_t id) const {
    char* piece = nullptr;
    size_t len = 0;
    if (shim_->id_to_piece(sp_, id, &piece, &len) != 0) return "";
    std::string out(piece, len);
    shim_->free(piece);
    return out;
  }

  // Decodes in-range ids with SentencePiece.
  absl::StatusOr<std::string> DecodeRun(const std::vector<int32_t>& ids) const {
    char* text = nullptr;
    size_t len = 0;
    char* error = nullptr;
    if (shim_->decode(sp_, ids.data(), ids.size(), &text, &len, &error) != 0) {
      return absl::InternalError(absl::StrCat("sentencepiece decode: ", TakeError(error)));
    }
    std::string out(text, len);
    shim_->free(text);
    return out;
  }

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

  const SentencePieceShim* shim_;
  TitansSentencePiece* sp_ = nullptr;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  int32_t pad_id_ = -1;
  std::vector<std::string> token_bytes_;
  std::vector<bool> control_ids_;  // Control symbols (<s>, </s>, ...).
  std::vector<bool> special_;      // Control and user-defined symbols.
  SpecialMatcher control_;         // Control symbols, for parse_special.
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
