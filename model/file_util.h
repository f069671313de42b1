// Small POSIX file helpers that report failures as absl::Status values (never exceptions).
//
// Error messages always name the path and the strerror() text of the failing system call.
// errno values map to codes as follows: ENOENT/ENOTDIR -> NOT_FOUND, EACCES/EPERM/EROFS ->
// PERMISSION_DENIED, ENOSPC/EDQUOT -> RESOURCE_EXHAUSTED, EISDIR -> FAILED_PRECONDITION, anything
// else -> INTERNAL.
//
// Thread safety: both functions are safe to call concurrently, except that concurrent
// WriteFileAtomic() calls for the same path from one process share a temporary file name and
// must be serialized by the caller.

#ifndef TITANS_MODEL_FILE_UTIL_H_
#define TITANS_MODEL_FILE_UTIL_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace titans {

// Returns the whole contents of the file at `path`. NOT_FOUND when it does not exist; other
// errors (a directory, unreadable, I/O error) as described above.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Replaces the file at `path` with `data` atomically: readers see either the old contents or the
// new ones, never a mix, even across a crash. Writes `path` + ".tmp.<pid>", fsyncs it, renames it
// over `path`, then fsyncs the containing directory. On failure the temporary file is removed and
// `path` is untouched (unless only the final directory fsync failed, after the rename). The new
// file gets mode 0644 minus the umask.
absl::Status WriteFileAtomic(const std::string& path, std::string_view data);

// The directory part of `path` ("." when it has none, "/" for a file in the root).
std::string DirName(const std::string& path);

// Writes all of `data` to `fd` (retrying short and interrupted writes); on error a prefix may have
// been written. `path` names the file in the error.
absl::Status WriteAll(int fd, std::string_view data, const std::string& path);

// The status for a failed system call on `path`, mapped and worded as described above:
// "<what> '<path>': <strerror>".
absl::Status ErrnoStatus(int err, const std::string& what, const std::string& path);

}  // namespace titans

#endif  // TITANS_MODEL_FILE_UTIL_H_
