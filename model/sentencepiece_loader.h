// Run-time loader for libtitans_sentencepiece.so (the C interface in model/sentencepiece_shim.h).
//
// Nothing in titans_model links SentencePiece: its protobuf copy would clash with the system
// libprotobuf that LibTorch and gRPC load (see model/sentencepiece_shim.h). The plug-in is
// loaded at run time with dlmopen(LM_ID_NEWLM, RTLD_NOW | RTLD_LOCAL) instead: in a link-map
// namespace of its own, with its own libstdc++ / libc instances, isolated from the process's
// libprotobuf in both directions. Memory never crosses the boundary unowned: buffers the plug-in
// returns are released with its own titans_sp_free().

#ifndef TITANS_MODEL_SENTENCEPIECE_LOADER_H_
#define TITANS_MODEL_SENTENCEPIECE_LOADER_H_

#include "absl/status/statusor.h"
#include "model/sentencepiece_shim.h"

namespace titans {

// Function table of the loaded plug-in; every member is non-null.
struct SentencePieceShim {
  decltype(&titans_sp_free) free;
  decltype(&titans_sp_create) create;
  decltype(&titans_sp_destroy) destroy;
  decltype(&titans_sp_encode) encode;
  decltype(&titans_sp_decode) decode;
  decltype(&titans_sp_vocab_size) vocab_size;
  decltype(&titans_sp_bos_id) bos_id;
  decltype(&titans_sp_eos_id) eos_id;
  decltype(&titans_sp_pad_id) pad_id;
  decltype(&titans_sp_unk_id) unk_id;
  decltype(&titans_sp_id_to_piece) id_to_piece;
  decltype(&titans_sp_piece_flags) piece_flags;
  decltype(&titans_sp_train) train;
};

// Loads libtitans_sentencepiece.so once per process (thread-safe) and returns its function
// table, which stays valid for the life of the process (the plug-in is never unloaded).
// Candidates, tried in order until one loads:
//   1. $TITANS_SENTENCEPIECE_SHIM (a full path to the plug-in), if set and non-empty;
//   2. libtitans_sentencepiece.so in the directory of the running executable (/proc/self/exe);
//   3. the build-tree path compiled in as TITANS_SENTENCEPIECE_SHIM_PATH;
//   4. plain "libtitans_sentencepiece.so" (the dynamic loader's search path).
// Each is opened with dlmopen(LM_ID_NEWLM, ..., RTLD_NOW | RTLD_LOCAL).
// Errors: FAILED_PRECONDITION, naming every attempt with its dlerror(), if no candidate loads or
// the one that loads lacks a symbol or has another TITANS_SP_API_VERSION. The outcome, success
// or failure, is cached for the life of the process.
absl::StatusOr<const SentencePieceShim*> LoadSentencePieceShim();

}  // namespace titans

#endif  // TITANS_MODEL_SENTENCEPIECE_LOADER_H_
