#include "model/sentencepiece_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#ifndef TITANS_SENTENCEPIECE_SHIM_PATH
#define TITANS_SENTENCEPIECE_SHIM_PATH ""
#endif

namespace titans {
namespace {

constexpr char kShimName[] = "libtitans_sentencepiece.so";

std::string DlError() {
  const char* error = dlerror();
  return error != nullptr ? error : "unknown dlopen error";
}

// The candidate file names, in lookup order, without duplicates.
std::vector<std::string> Candidates() {
  std::vector<std::string> candidates;
  auto add = [&candidates](std::string path) {
    if (path.empty()) return;
    for (const std::string& c : candidates) {
      if (c == path) return;
    }
    candidates.push_back(std::move(path));
  };
  if (const char* env = std::getenv("TITANS_SENTENCEPIECE_SHIM"); env != nullptr) add(env);
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec && exe.has_parent_path()) add((exe.parent_path() / kShimName).string());
  add(TITANS_SENTENCEPIECE_SHIM_PATH);
  add(kShimName);
  return candidates;
}

template <typename Fn>
bool Resolve(void* handle, const char* name, Fn* fn, std::vector<std::string>* missing) {
  *fn = reinterpret_cast<Fn>(dlsym(handle, name));
  if (*fn == nullptr) missing->push_back(name);
  return *fn != nullptr;
}

absl::StatusOr<const SentencePieceShim*> Load() {
  std::vector<std::string> attempts;
  for (const std::string& path : Candidates()) {
    // A fresh link-map namespace: the plug-in, SentencePiece (with its embedded protobuf) and
    // their own instances of libstdc++ / libc are loaded there, so SentencePiece binds only to
    // its own protobuf and nothing in the main namespace (LibTorch's libprotobuf) sees it.
    //
    // dlopen(RTLD_LOCAL | RTLD_DEEPBIND) is not enough: DEEPBIND also binds SentencePiece to
    // libstdc++'s own std::cout / std::cerr storage, which is never constructed whenever the
    // executable holds copy-relocated iostream objects (nearly every C++ program does), so
    // SentencePiece's first log line segfaults (seen in SentencePieceTrainer::Train). Without
    // DEEPBIND, SentencePiece's ~1300 protobuf symbols that libprotobuf.so also defines bind to
    // the system libprotobuf instead of its own copy.
    void* handle = dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      attempts.push_back(DlError());
      continue;
    }
    auto version =
        reinterpret_cast<decltype(&titans_sp_api_version)>(dlsym(handle, "titans_sp_api_version"));
    if (version == nullptr || version() != TITANS_SP_API_VERSION) {
      attempts.push_back(absl::StrCat(
          path, ": ",
          version == nullptr
              ? "no titans_sp_api_version symbol"
              : absl::StrCat("API version ", version(), ", expected ", TITANS_SP_API_VERSION)));
      dlclose(handle);
      continue;
    }
    // Never freed: the plug-in stays loaded for the life of the process.
    auto* shim = new SentencePieceShim();
    std::vector<std::string> missing;
    Resolve(handle, "titans_sp_free", &shim->free, &missing);
    Resolve(handle, "titans_sp_create", &shim->create, &missing);
    Resolve(handle, "titans_sp_destroy", &shim->destroy, &missing);
    Resolve(handle, "titans_sp_encode", &shim->encode, &missing);
    Resolve(handle, "titans_sp_decode", &shim->decode, &missing);
    Resolve(handle, "titans_sp_vocab_size", &shim->vocab_size, &missing);
    Resolve(handle, "titans_sp_bos_id", &shim->bos_id, &missing);
    Resolve(handle, "titans_sp_eos_id", &shim->eos_id, &missing);
    Resolve(handle, "titans_sp_pad_id", &shim->pad_id, &missing);
    Resolve(handle, "titans_sp_unk_id", &shim->unk_id, &missing);
    Resolve(handle, "titans_sp_id_to_piece", &shim->id_to_piece, &missing);
    Resolve(handle, "titans_sp_piece_flags", &shim->piece_flags, &missing);
    Resolve(handle, "titans_sp_train", &shim->train, &missing);
    if (missing.empty()) return shim;
    delete shim;
    attempts.push_back(absl::StrCat(path, ": missing symbols ", absl::StrJoin(missing, ", ")));
    dlclose(handle);
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "cannot load the SentencePiece plug-in ", kShimName,
      " (build the titans_sentencepiece target, or set TITANS_SENTENCEPIECE_SHIM to its path): ",
      absl::StrJoin(attempts, "; ")));
}

}  // namespace

absl::StatusOr<const SentencePieceShim*> LoadSentencePieceShim() {
  static const absl::StatusOr<const SentencePieceShim*>* const shim =
      new absl::StatusOr<const SentencePieceShim*>(Load());
  return *shim;
}

}  // namespace titans
