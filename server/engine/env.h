// Env: the engine's storage reaches the operating system only through this interface (files,
// fsync, rename, directories, the clock), so that tests can inject faults: torn writes, failed
// fsyncs and renames, a full disk, clock jumps — without root, mounts or sleeps
// (FaultInjectionEnv in tests/server/engine/fault_injection_env.h). LevelDB's Env is the model.
//
// Errors are values. errno maps to codes as in model/file_util.h: ENOENT/ENOTDIR -> NOT_FOUND,
// EACCES/EPERM/EROFS -> PERMISSION_DENIED, ENOSPC/EDQUOT -> RESOURCE_EXHAUSTED, else INTERNAL;
// messages name the path.
//
// Thread safety: Env::Default() and every method of an Env are safe to call from any thread. A
// WritableFile is used by one thread at a time.
#ifndef TITANS_SERVER_ENGINE_ENV_H_
#define TITANS_SERVER_ENGINE_ENV_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace titans::engine {

// A file open for appending. Its destructor closes it (without syncing).
class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Appends all of `data` (retrying short writes). On error a prefix may have been written.
  virtual absl::Status Append(std::string_view data) = 0;
  // fdatasync: after OK everything appended survives a crash.
  virtual absl::Status Sync() = 0;
  // Cuts the file to `size` bytes; the next Append writes there.
  virtual absl::Status Truncate(int64_t size) = 0;
};

class Env {
 public:
  virtual ~Env() = default;

  // The real file system and clocks. Never null; lives for the whole process.
  static Env* Default();

  // Creates (or empties) `path` for writing.
  virtual absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(
      const std::string& path) = 0;
  // The whole file. NOT_FOUND when it does not exist.
  virtual absl::StatusOr<std::string> ReadFile(const std::string& path) = 0;
  // rename(2): atomic replacement of `to`.
  virtual absl::Status RenameFile(const std::string& from, const std::string& to) = 0;
  // Removes a file; OK when it did not exist.
  virtual absl::Status RemoveFile(const std::string& path) = 0;
  // Removes a directory and everything under it; OK when it did not exist.
  virtual absl::Status RemoveTree(const std::string& path) = 0;
  // A hard link `to` naming the same file as `from`.
  virtual absl::Status LinkFile(const std::string& from, const std::string& to) = 0;
  // mkdir -p.
  virtual absl::Status CreateDirs(const std::string& path) = 0;
  // fsyncs the directory, making the entries created or renamed in it durable.
  virtual absl::Status SyncDir(const std::string& path) = 0;
  // The names (not paths) of the directory's entries, unordered. NOT_FOUND when it does not exist.
  virtual absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) = 0;
  virtual bool FileExists(const std::string& path) = 0;

  // Wall-clock milliseconds since the epoch (session timestamps, TTLs).
  virtual int64_t NowUnixMs() = 0;

  // Replaces `path` with `data` atomically: readers see the old contents or the new, never a mix,
  // even across a crash. Writes `path`.tmp, syncs it, renames it over `path`, syncs the directory.
  // On failure the temporary file is removed and `path` is untouched (unless only the final
  // directory sync failed, after the rename). Built on the primitives above, so that every step
  // can fail in a test. Concurrent calls for the same path must be serialized by the caller.
  absl::Status WriteFileAtomic(const std::string& path, std::string_view data);
};

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_ENV_H_
