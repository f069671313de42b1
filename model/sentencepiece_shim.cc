// libtitans_sentencepiece.so: the C interface of model/sentencepiece_shim.h over SentencePiece.
// Built as its own MODULE target (not part of titans_model); it must not include Abseil or link
// libprotobuf (see the header for why).

#include "model/sentencepiece_shim.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <string_view>
#include <vector>

// Debian's sentencepiece_processor.h declares `namespace absl { using std::string_view; }`,
// which collides with Abseil's own absl::string_view class (this Abseil build does not alias
// std::string_view). Renaming the namespace while the headers are parsed keeps the shim clear of
// any clash; the headers' signatures still name std::string_view, so the mangled symbols match
// the library.
#define absl titans_sentencepiece_absl
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#undef absl

#define TITANS_SP_EXPORT extern "C" __attribute__((visibility("default")))

struct TitansSentencePiece {
  sentencepiece::SentencePieceProcessor processor;
  std::vector<int32_t> flags;  // TITANS_SP_PIECE_* bits per id.
};

namespace {

// Copies `size` bytes into a malloc'ed, NUL-terminated buffer (null if out of memory).
char* CopyBytes(const char* data, size_t size) {
  auto* out = static_cast<char*>(std::malloc(size + 1));
  if (out == nullptr) return nullptr;
  if (size > 0) std::memcpy(out, data, size);
  out[size] = '\0';
  return out;
}

void SetError(char** error, const std::string& message) {
  if (error != nullptr) *error = CopyBytes(message.data(), message.size());
}

// Runs `fn` (returning 0 / non-zero), turning any C++ exception into an error.
template <typename Fn>
int Guard(char** error, Fn fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    SetError(error, std::string("sentencepiece: ") + e.what());
  } catch (...) {
    SetError(error, "sentencepiece: unknown exception");
  }
  return 1;
}

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

bool InRange(const TitansSentencePiece* sp, int32_t id) {
  return id >= 0 && static_cast<size_t>(id) < sp->flags.size();
}

}  // namespace

TITANS_SP_EXPORT int32_t titans_sp_api_version(void) { return TITANS_SP_API_VERSION; }

TITANS_SP_EXPORT void titans_sp_free(void* buffer) { std::free(buffer); }

TITANS_SP_EXPORT TitansSentencePiece* titans_sp_create(const char* model_path, char** error) {
  TitansSentencePiece* result = nullptr;
  Guard(error, [&]() {
    auto* sp = new TitansSentencePiece();
    const auto status = sp->processor.Load(model_path);
    if (!status.ok()) {
      SetError(error, status.ToString());
      delete sp;
      return 1;
    }
    const int n = sp->processor.GetPieceSize();
    const std::vector<int> types = ParsePieceTypes(sp->processor.serialized_model_proto());
    sp->flags.assign(n > 0 ? n : 0, 0);
    for (int id = 0; id < n; ++id) {
      int32_t flags = 0;
      if (sp->processor.IsControl(id)) flags |= TITANS_SP_PIECE_CONTROL;
      if (sp->processor.IsUnknown(id)) flags |= TITANS_SP_PIECE_UNKNOWN;
      if (sp->processor.IsByte(id)) flags |= TITANS_SP_PIECE_BYTE;
      if (sp->processor.IsUnused(id)) flags |= TITANS_SP_PIECE_UNUSED;
      if (static_cast<int>(types.size()) == n && types[id] == kUserDefinedPieceType) {
        flags |= TITANS_SP_PIECE_USER_DEFINED;
      }
      sp->flags[id] = flags;
    }
    result = sp;
    return 0;
  });
  return result;
}

TITANS_SP_EXPORT void titans_sp_destroy(TitansSentencePiece* sp) { delete sp; }

TITANS_SP_EXPORT int titans_sp_encode(const TitansSentencePiece* sp, const char* text, size_t len,
                                      int32_t** ids, size_t* num_ids, char** error) {
  *ids = nullptr;
  *num_ids = 0;
  return Guard(error, [&]() {
    std::vector<int> pieces;
    const auto status = sp->processor.Encode(std::string_view(text, len), &pieces);
    if (!status.ok()) {
      SetError(error, status.ToString());
      return 1;
    }
    if (pieces.empty()) return 0;
    auto* out = static_cast<int32_t*>(std::malloc(pieces.size() * sizeof(int32_t)));
    if (out == nullptr) throw std::bad_alloc();
    for (size_t i = 0; i < pieces.size(); ++i) out[i] = pieces[i];
    *ids = out;
    *num_ids = pieces.size();
    return 0;
  });
}

TITANS_SP_EXPORT int titans_sp_decode(const TitansSentencePiece* sp, const int32_t* ids,
                                      size_t num_ids, char** text, size_t* len, char** error) {
  *text = nullptr;
  *len = 0;
  return Guard(error, [&]() {
    std::vector<int> pieces(ids, ids + num_ids);
    std::string decoded;
    const auto status = sp->processor.Decode(pieces, &decoded);
    if (!status.ok()) {
      SetError(error, status.ToString());
      return 1;
    }
    char* out = CopyBytes(decoded.data(), decoded.size());
    if (out == nullptr) throw std::bad_alloc();
    *text = out;
    *len = decoded.size();
    return 0;
  });
}

TITANS_SP_EXPORT int32_t titans_sp_vocab_size(const TitansSentencePiece* sp) {
  return static_cast<int32_t>(sp->flags.size());
}

TITANS_SP_EXPORT int32_t titans_sp_bos_id(const TitansSentencePiece* sp) {
  return sp->processor.bos_id();
}

TITANS_SP_EXPORT int32_t titans_sp_eos_id(const TitansSentencePiece* sp) {
  return sp->processor.eos_id();
}

TITANS_SP_EXPORT int32_t titans_sp_pad_id(const TitansSentencePiece* sp) {
  return sp->processor.pad_id();
}

TITANS_SP_EXPORT int32_t titans_sp_unk_id(const TitansSentencePiece* sp) {
  return sp->processor.unk_id();
}

TITANS_SP_EXPORT int titans_sp_id_to_piece(const TitansSentencePiece* sp, int32_t id, char** piece,
                                           size_t* len) {
  *piece = nullptr;
  *len = 0;
  if (!InRange(sp, id)) return 1;
  return Guard(nullptr, [&]() {
    const std::string& str = sp->processor.IdToPiece(id);
    char* out = CopyBytes(str.data(), str.size());
    if (out == nullptr) return 1;
    *piece = out;
    *len = str.size();
    return 0;
  });
}

TITANS_SP_EXPORT int32_t titans_sp_piece_flags(const TitansSentencePiece* sp, int32_t id) {
  return InRange(sp, id) ? sp->flags[id] : 0;
}

TITANS_SP_EXPORT int titans_sp_train(const char* args, char** error) {
  return Guard(error, [&]() {
    const auto status = sentencepiece::SentencePieceTrainer::Train(std::string_view(args));
    if (!status.ok()) {
      SetError(error, status.ToString());
      return 1;
    }
    return 0;
  });
}
