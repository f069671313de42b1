// C interface of libtitans_sentencepiece.so, a small plug-in that wraps SentencePiece.
//
// Why a plug-in: Debian's libsentencepiece.so statically embeds its own protobuf-lite and exports
// those symbols. A process that also links the system libprotobuf.so (LibTorch, gRPC) and links
// SentencePiece directly crashes before main: the two protobuf copies interpose on each other.
// The tokenizer therefore never links SentencePiece; it loads this plug-in into a link-map
// namespace of its own (dlmopen), where SentencePiece binds to its embedded protobuf and nothing
// else in the process sees it (see model/sentencepiece_loader.h). This header is plain C and
// includes no Abseil or SentencePiece headers.
//
// Only plain C types cross the boundary. Buffers returned through `char**` / `int32_t**`
// out-parameters are allocated by the plug-in and must be released with titans_sp_free().
// Functions returning int return 0 on success and non-zero on failure, in which case `*error`
// (if `error` is non-null) receives a message the caller frees. No C++ exception escapes.
// A handle is immutable after creation; all functions taking a const handle may be called
// concurrently.

#ifndef TITANS_MODEL_SENTENCEPIECE_SHIM_H_
#define TITANS_MODEL_SENTENCEPIECE_SHIM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a signature below changes; the loader rejects a plug-in of another version.
#define TITANS_SP_API_VERSION 1

// Bits returned by titans_sp_piece_flags().
#define TITANS_SP_PIECE_CONTROL 1
#define TITANS_SP_PIECE_UNKNOWN 2
#define TITANS_SP_PIECE_USER_DEFINED 4
#define TITANS_SP_PIECE_BYTE 8
#define TITANS_SP_PIECE_UNUSED 16

typedef struct TitansSentencePiece TitansSentencePiece;

int32_t titans_sp_api_version(void);

// Releases a buffer returned by any function of this interface. Null is ignored.
void titans_sp_free(void* buffer);

// Loads a model file. Returns null on failure (and sets *error).
TitansSentencePiece* titans_sp_create(const char* model_path, char** error);
void titans_sp_destroy(TitansSentencePiece* sp);

// Encodes `len` bytes of `text` into *ids / *num_ids (*ids may be null when *num_ids is 0).
int titans_sp_encode(const TitansSentencePiece* sp, const char* text, size_t len, int32_t** ids,
                     size_t* num_ids, char** error);
// Decodes ids into *text / *len (*text is always NUL-terminated as well). Ids must be valid.
int titans_sp_decode(const TitansSentencePiece* sp, const int32_t* ids, size_t num_ids, char** text,
                     size_t* len, char** error);

int32_t titans_sp_vocab_size(const TitansSentencePiece* sp);
// Reserved ids; -1 when the model has no such token.
int32_t titans_sp_bos_id(const TitansSentencePiece* sp);
int32_t titans_sp_eos_id(const TitansSentencePiece* sp);
int32_t titans_sp_pad_id(const TitansSentencePiece* sp);
int32_t titans_sp_unk_id(const TitansSentencePiece* sp);

// The piece string of `id` (e.g. "\xe2\x96\x81the", "<s>", "<0x41>") into *piece / *len.
// Fails for an out-of-range id.
int titans_sp_id_to_piece(const TitansSentencePiece* sp, int32_t id, char** piece, size_t* len);
// TITANS_SP_PIECE_* bits of `id`; 0 for normal pieces and out-of-range ids.
int32_t titans_sp_piece_flags(const TitansSentencePiece* sp, int32_t id);

// Runs SentencePieceTrainer::Train with a command-line style argument string
// ("--input=... --model_prefix=... --vocab_size=...").
int titans_sp_train(const char* args, char** error);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // TITANS_MODEL_SENTENCEPIECE_SHIM_H_
